import socket

import pytest
import torch
from safetensors.torch import load_file, save_file

from seqedit.models import CheckpointMismatchError, ModelUnavailableError, load, spec, tiny

PROMPTS = ["The capital of France is", "x"]


def _save(tmp_path, arch):
    model, tok = tiny(arch, seed=1)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return model, tok


def _logits(model, tok):
    with torch.no_grad():
        return model(**tok(PROMPTS, padding=True, return_tensors="pt")).logits


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("seqedit.models tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_load_local_directory(tmp_path, arch, no_network):
    model, tok = _save(tmp_path, arch)
    loaded, loaded_tok = load(tmp_path)
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    assert loaded_tok(PROMPTS[0])["input_ids"] == tok(PROMPTS[0])["input_ids"]
    assert loaded_tok.padding_side == "right" and loaded_tok.pad_token_id == tok.pad_token_id
    torch.testing.assert_close(_logits(loaded, loaded_tok), _logits(model, tok), rtol=0, atol=0)
    assert spec(loaded) == spec(model)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # untied and tied LM head
def test_load_single_safetensors_file(tmp_path, arch, no_network):
    model, tok = _save(tmp_path, arch)
    (tmp_path / "model.safetensors").rename(tmp_path / "edited.safetensors")
    loaded, loaded_tok = load(tmp_path / "edited.safetensors")
    torch.testing.assert_close(_logits(loaded, loaded_tok), _logits(model, tok), rtol=0, atol=0)
    assert spec(loaded).tied_lm_head == spec(model).tied_lm_head


def test_checkpoint_with_missing_tensor_is_rejected(tmp_path):
    _save(tmp_path, "llama")
    tensors = load_file(tmp_path / "model.safetensors")
    dropped = next(k for k in tensors if "down_proj" in k)
    del tensors[dropped]
    (tmp_path / "model.safetensors").unlink()
    save_file(tensors, tmp_path / "partial.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match="missing_keys.*down_proj"):
        load(tmp_path / "partial.safetensors")


def test_dtype_and_device(tmp_path):
    _save(tmp_path, "llama")
    loaded, _ = load(tmp_path, dtype="bfloat16", device="cpu")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    loaded, _ = load(tmp_path, dtype=torch.float64)
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    with pytest.raises(ValueError, match="dtype"):
        load(tmp_path, dtype="int8")


def test_pad_token_supplied_when_checkpoint_has_none(tmp_path):
    model, tok = tiny("llama")
    tok.pad_token = None
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, loaded_tok = load(tmp_path)
    assert loaded_tok.pad_token == loaded_tok.eos_token == "<eos>"


def test_unknown_name_never_goes_to_the_hub(tmp_path, no_network):
    with pytest.raises(ModelUnavailableError, match="never downloads"):
        load("HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(ModelUnavailableError, match="config.json"):
        load(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelUnavailableError, match="expected a model directory"):
        load(tmp_path / "weights.bin")
    (tmp_path / "lonely.safetensors").write_bytes(b"")
    with pytest.raises(ModelUnavailableError, match="config.json next to it"):
        load(tmp_path / "lonely.safetensors")
