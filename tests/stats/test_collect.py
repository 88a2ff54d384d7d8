"""The statistic itself: equal to a plain float64 computation, whatever the batching."""
from __future__ import annotations

import gzip
import json

import pytest
import torch

from seqedit.models import spec as model_spec
from seqedit.stats import second_moments
from seqedit.stats.corpus import pack, select

from stats_helpers import ForwardCounter, plain_second_moment

MAX_LEN = 64


def _ours(model, tok, layers, docs, corpus=None, **kw):
    """Our statistic over every document of `docs` (budget = their exact token count), read
    from `corpus` when given (a file holding the same documents)."""
    budget = sum(len(tok(d, truncation=True, max_length=MAX_LEN)["input_ids"]) for d in docs)
    kw = {"max_tokens": budget, "max_length": MAX_LEN, "cache": False, "progress": False, **kw}
    return second_moments(model, tok, layers, corpus=docs if corpus is None else corpus, **kw)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma3"])
def test_equals_plain_float64_oracle(arch, corpus):
    from seqedit.models import tiny

    model, tok = tiny(arch, seed=0)
    spec = model_spec(model)
    layers = [0, spec.num_layers - 2]
    ours = _ours(model, tok, layers, corpus, batch_tokens=256)  # several padded batches
    for layer in layers:
        want, n = plain_second_moment(model, tok, layer, corpus, MAX_LEN)
        got, count = ours[layer]
        assert count == n
        assert got.dtype == torch.float64 and got.device.type == "cpu"
        assert got.shape == (spec.mlp_hidden_size, spec.mlp_hidden_size)
        # Keys differ from the oracle's only by float32 rounding of differently shaped GEMMs.
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_padding_does_not_leak(llama, corpus):
    model, tok = llama
    docs = [corpus[0][:3], corpus[1], "A" * 60, corpus[4][:10]]  # lengths far apart
    one_batch = _ours(model, tok, [1], docs, batch_tokens=4 * MAX_LEN)
    separate = _ours(model, tok, [1], docs, batch_tokens=MAX_LEN)
    want, n = plain_second_moment(model, tok, 1, docs, MAX_LEN)
    assert one_batch[1][1] == separate[1][1] == n
    torch.testing.assert_close(one_batch[1][0], want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(separate[1][0], want, rtol=1e-5, atol=1e-7)


def test_one_pass_equals_separate_passes(llama, corpus):
    model, tok = llama
    layers = list(range(model_spec(model).num_layers))
    together = _ours(model, tok, layers, corpus)
    for layer in layers:
        alone = _ours(model, tok, [layer], corpus)[layer]
        assert alone[1] == together[layer][1]
        torch.testing.assert_close(alone[0], together[layer][0], rtol=1e-12, atol=0)


def test_forward_stops_after_last_layer(llama, corpus):
    model, tok = llama
    spec = model_spec(model)
    later = ForwardCounter(spec.layer(model, 2))
    head = ForwardCounter(spec.lm_head(model))
    last_proj = ForwardCounter(spec.mlp_out(model, 1))
    _ours(model, tok, [0, 1], corpus)
    assert later.calls == head.calls == 0
    assert last_proj.calls > 0  # its pre-hook ran (and stopped the forward)


def test_budget_is_exact_and_deterministic(llama, corpus):
    model, tok = llama
    a = second_moments(model, tok, [1], corpus=corpus, max_tokens=777, max_length=MAX_LEN,
                       batch_tokens=128, cache=False, progress=False)
    b = second_moments(model, tok, [1], corpus=list(reversed(corpus)), max_tokens=777,
                       max_length=MAX_LEN, batch_tokens=512, cache=False, progress=False)
    assert a[1][1] == b[1][1] == 777
    torch.testing.assert_close(a[1][0], b[1][0], rtol=1e-5, atol=1e-7)
    # The budget takes whole documents in hash order and cuts the last one: a causal prefix.
    chosen = select(corpus, tok, 777, MAX_LEN)
    assert sum(len(d) for d in chosen) == 777
    batches = pack(chosen, 128)
    assert all(b.inputs()[0].numel() <= 128 for b in batches)
    assert sum(b.tokens for b in batches) == 777


def test_bfloat16_model_keeps_its_dtype(corpus):
    from seqedit.models import tiny

    model, tok = tiny("llama", seed=0)
    model = model.to(torch.bfloat16)
    seen = []
    handle = model_spec(model).mlp_out(model, 1).register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    got = _ours(model, tok, [1], corpus[:10])[1][0]
    handle.remove()
    assert set(seen) == {torch.bfloat16}
    want, _ = plain_second_moment(model, tok, 1, corpus[:10], MAX_LEN)
    torch.testing.assert_close(got, want, rtol=3e-2, atol=1e-4)  # bf16 keys: batch shape moves rounding


def test_corpus_files_equal_the_list(llama, corpus, tmp_path):
    model, tok = llama
    docs = corpus[:12]
    (tmp_path / "c.txt").write_text("\n".join(docs) + "\n\n")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    with gzip.open(tmp_path / "c.json.gz", "wt") as f:
        json.dump({str(i): {"extract": d} for i, d in enumerate(docs)}, f)
    want = _ours(model, tok, [1], docs)[1]
    for name in ("c.txt", "c.jsonl", "c.json.gz"):
        got = _ours(model, tok, [1], docs, corpus=tmp_path / name)[1]
        assert got[1] == want[1]
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)


def test_default_corpus_is_the_packaged_one(llama):
    model, tok = llama
    got = second_moments(model, tok, [0], max_tokens=300, cache=False, progress=False)
    assert got[0][1] == 300 and torch.isfinite(got[0][0]).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"layers": [99]}, ValueError, "out of range"),
        ({"layers": []}, ValueError, "empty"),
        ({"corpus": ["", "  "]}, ValueError, "no non-empty documents"),
        ({"corpus": "/nonexistent/file.txt"}, FileNotFoundError, "no such file"),
        ({"corpus": [1, 2]}, TypeError, "must be strings"),
        ({"max_tokens": 0}, ValueError, "max_tokens must be a positive int"),
        ({"batch_tokens": 16, "max_length": 32}, ValueError, "at least max_length"),
    ],
)
def test_clear_errors(llama, corpus, kwargs, error, match):
    model, tok = llama
    kwargs = {"layers": [0], "corpus": corpus, **kwargs}
    with pytest.raises(error, match=match):
        second_moments(model, tok, kwargs.pop("layers"), cache=False, progress=False, **kwargs)


def test_training_mode_model_is_run_in_eval_mode_and_restored(corpus):
    from seqedit.models import tiny

    model, tok = tiny("gpt2", seed=0, resid_pdrop=0.5, embd_pdrop=0.5)
    model.train()
    model.transformer.h[0].eval()  # a mixed state must come back as it was
    got = _ours(model, tok, [1], corpus[:8])[1][0]
    assert model.training and not model.transformer.h[0].training and model.transformer.h[1].training
    model.eval()
    want = _ours(model, tok, [1], corpus[:8])[1][0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_float64_model_is_accumulated_in_float64(corpus):
    from seqedit.models import tiny

    model, tok = tiny("llama", seed=0)
    model = model.double()
    got = _ours(model, tok, [0, 2], corpus[:10], batch_tokens=128)
    for layer in (0, 2):
        want, _ = plain_second_moment(model, tok, layer, corpus[:10], MAX_LEN)
        torch.testing.assert_close(got[layer][0], want, rtol=1e-11, atol=1e-14)
