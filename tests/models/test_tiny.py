import pytest
import torch
from transformers import PreTrainedTokenizerFast

from seqedit.models import TINY_ARCHS, byte_tokenizer, spec, tiny

TEXTS = ["The capital of France is", "  spaces\tand\nnewlines  ", "naïve café 東京 😀", "", "<not special>"]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_round_trip(text):
    tok = byte_tokenizer()
    ids = tok(text)["input_ids"]
    assert ids == [3 + b for b in text.encode("utf-8")]
    assert tok.decode(ids) == text


def test_byte_tokenizer_specials_and_padding():
    tok = byte_tokenizer()
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.padding_side == "right"
    batch = tok(["abc", "a"], padding=True)
    assert batch["input_ids"][1] == [100, 0, 0]
    assert batch["attention_mask"][1] == [1, 0, 0]
    assert tok.decode([1, 100, 2, 0], skip_special_tokens=True) == "a"


def test_bos_habit():
    assert byte_tokenizer(add_bos=True)("a")["input_ids"] == [1, 100]
    _, gemma_tok = tiny("gemma3")
    _, llama_tok = tiny("llama")
    assert gemma_tok("a")["input_ids"] == [1, 100]
    assert llama_tok("a")["input_ids"] == [100]
    assert tiny("llama", add_bos=True)[1]("a")["input_ids"] == [1, 100]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_model_properties(arch):
    model, tok = tiny(arch)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.get_input_embeddings().num_embeddings >= len(tok)
    with torch.no_grad():
        out = model(**tok(["héllo"], return_tensors="pt")).logits
    assert torch.isfinite(out).all()


def test_seed_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, _ = tiny("llama", seed=3)
    b, _ = tiny("llama", seed=3)
    c, _ = tiny("llama", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    wa, wb, wc = (spec(m).mlp_out(m, 0).weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_dims_and_config_passthrough():
    model, _ = tiny("qwen2", hidden_size=32, num_layers=2, intermediate_size=96, num_heads=2, num_kv_heads=1,
                    tie_word_embeddings=True)
    s = spec(model)
    assert (s.num_layers, s.hidden_size, s.mlp_hidden_size, s.tied_lm_head) == (2, 32, 96, True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        tiny("mamba")
    with pytest.raises(ValueError, match="vocab_size"):
        tiny("llama", vocab_size=100)
