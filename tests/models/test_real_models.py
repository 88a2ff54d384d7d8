"""The packaged real models (slow: the first run converts the GGUF into the user cache).

Uses the normal cache (`$SEQEDIT_CACHE` or ~/.cache/seqedit), so later test modules that load the
same model reuse the copy. Skips, with the install command, when a package is missing.
"""

import importlib.util
import time

import pytest
import torch

from seqedit.models import PACKAGED, load, packaged, spec

pytestmark = pytest.mark.slow

FRANCE = "The capital of France is"
EIFFEL = "The Eiffel Tower is located in the city of"
CASES = {
    # name: (layers, hidden, mlp, tied, id the tokenizer prepends or None, {prompt: word expected or None})
    "smollm2-135m": (30, 576, 1536, True, None, {FRANCE: "Paris", EIFFEL: "Paris"}),
    # Gemma-3-270M (base) continues FRANCE with "the capital of the country of France..." greedily.
    "gemma3-270m": (18, 640, 2048, True, 2, {FRANCE: None, EIFFEL: "Paris"}),
}


def _require(name):
    model = PACKAGED[name]
    missing = [p.distribution for p in model.parts if importlib.util.find_spec(p.module) is None]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}: {model.pip_command()}")


@pytest.mark.parametrize("name", list(CASES))
def test_packaged_model(name, monkeypatch):
    _require(name)
    n_layers, hidden, mlp, tied, bos, prompts = CASES[name]

    started = time.perf_counter()
    model, tok = load(name)
    first = time.perf_counter() - started

    # The second load must come from the safetensors cache: converting again is an error here.
    def no_conversion(*args):
        raise AssertionError("second load converted the GGUF again")

    monkeypatch.setattr(packaged, "_convert", no_conversion)
    started = time.perf_counter()
    model, tok = load(name)
    second = time.perf_counter() - started
    print(f"\n{name}: first load {first:.1f}s, cached load {second:.1f}s")
    assert second < max(first, 10.0) * 1.5

    s = spec(model)
    assert (s.num_layers, s.hidden_size, s.mlp_hidden_size, s.tied_lm_head) == (n_layers, hidden, mlp, tied)
    assert s.mlp_out_template == "model.layers.{}.mlp.down_proj" and not s.mlp_out_transposed
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tok.pad_token is not None and tok.padding_side == "right"

    for prompt, expected in prompts.items():
        batch = tok(prompt, return_tensors="pt")
        ids = batch["input_ids"][0].tolist()
        assert (ids[0] == bos) if bos is not None else (ids[0] != tok.bos_token_id)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        print(f"{name}: {prompt!r} -> {text!r}")
        assert sum(c.isalpha() for c in text) > len(text) / 2  # words, not byte soup
        if expected is not None:
            assert expected in text


def test_smollm2_tokenizer_matches_reference_ids():
    _require("smollm2-135m")
    _, tok = load("smollm2-135m")
    # Ids of SmolLM2's own tokenizer (the GGUF's vocabulary and merges).
    assert tok("The capital of France is")["input_ids"] == [504, 3575, 282, 4649, 314]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")


def test_gemma3_tokenizer_matches_reference_ids():
    _require("gemma3-270m")
    _, tok = load("gemma3-270m")
    # Gemma 3's tokenizer: <bos> then whole words (transformers' own GGUF import splits into characters).
    assert tok("The capital of France is")["input_ids"] == [2, 818, 5279, 529, 7001, 563]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
