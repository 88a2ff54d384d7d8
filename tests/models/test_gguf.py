"""GGUF metadata reader and tokenizer reconstruction, on small GGUF files written here."""

import numpy as np
import pytest

from seqedit.models import gguf

gguf_lib = pytest.importorskip("gguf")

BYTES = [f"<0x{b:02X}>" for b in range(256)]


def _write(path, arch, fill):
    writer = gguf_lib.GGUFWriter(str(path), arch)
    fill(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_read_metadata_types(tmp_path):
    def fill(w):
        w.add_uint32("test.u32", 7)
        w.add_int64("test.i64", -3)
        w.add_float32("test.f32", 0.5)
        w.add_bool("test.flag", True)
        w.add_string("test.s", "héllo")
        w.add_array("test.ints", [1, 2, 3])
        w.add_array("test.strs", ["a", "", "ü"])

    meta = gguf.read_metadata(_write(tmp_path / "m.gguf", "llama", fill))
    assert meta["general.architecture"] == "llama"
    assert (meta["test.u32"], meta["test.i64"], meta["test.f32"], meta["test.flag"]) == (7, -3, 0.5, True)
    assert meta["test.s"] == "héllo"
    assert np.array_equal(meta["test.ints"], [1, 2, 3])
    assert meta["test.strs"] == ["a", "", "ü"]


def test_not_a_gguf(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(ValueError, match="not a GGUF"):
        gguf.read_metadata(tmp_path / "x.gguf")


def _spm_meta(tmp_path, add_bos=True):
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", *BYTES,
              "a", "b", "c", "\u2581", "ab", "\u2581a", "\u2581ab", "abc", "\u2581abc", "bc"]
    # SentencePiece-BPE: score = -(merge rank); "\u2581ab" merges before "abc", "bc" ranks last.
    scores = [0.0] * (5 + 256) + [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    types = [3, 3, 3, 2, 3, *[6] * 256, *[1] * 10]

    def fill(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(pieces)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(add_bos)
        w.add_context_length(64)

    return gguf.read_metadata(_write(tmp_path / "spm.gguf", "gemma3", fill)), pieces


def test_spm_bpe_tokenizer_merges_by_score(tmp_path):
    meta, pieces = _spm_meta(tmp_path)
    tok = gguf.tokenizer_from_metadata(meta)
    ids = tok("abc abc ab")["input_ids"]
    assert [pieces[i] for i in ids] == ["<bos>", "abc", "\u2581abc", "\u2581ab"]
    assert tok.decode(ids, skip_special_tokens=True) == "abc abc ab"
    # Unknown characters fall back to bytes and decode back.
    ids = tok("a€")["input_ids"]
    assert [pieces[i] for i in ids] == ["<bos>", "a", "<0xE2>", "<0x82>", "<0xAC>"]
    assert tok.decode(ids, skip_special_tokens=True) == "a€"
    # Control tokens are matched whole.
    assert [pieces[i] for i in tok("<start_of_turn>a")["input_ids"]] == ["<bos>", "<start_of_turn>", "a"]
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<bos>", "<eos>", "<pad>", "<unk>")
    assert tok.padding_side == "right" and tok.model_max_length == 64


def test_spm_without_add_bos(tmp_path):
    meta, pieces = _spm_meta(tmp_path, add_bos=False)
    tok = gguf.tokenizer_from_metadata(meta)
    assert [pieces[i] for i in tok("ab")["input_ids"]] == ["ab"]


def _byte_alphabet():
    from seqedit.models.tiny import _byte_alphabet

    return _byte_alphabet()


def test_gpt2_bpe_tokenizer(tmp_path):
    alphabet = _byte_alphabet()
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *alphabet, "\u0120t", "he", "\u0120the", "1", "2"]
    merges = ["\u0120 t", "h e", "\u0120t he"]

    def fill(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types([3, 3, 3, *[1] * (len(tokens) - 3)])
        w.add_token_merges(merges)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(False)

    meta = gguf.read_metadata(_write(tmp_path / "bpe.gguf", "llama", fill))
    tok = gguf.tokenizer_from_metadata(meta)
    ids = tok(" the 12<|im_end|>")["input_ids"]
    assert [tokens[i] for i in ids] == ["\u0120the", "\u0120", "1", "2", "<|im_end|>"]
    assert tok.decode(ids) == " the 12<|im_end|>"
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")


def test_unsupported_tokenizer_kinds(tmp_path):
    with pytest.raises(NotImplementedError, match="tokenizer model"):
        gguf.tokenizer_from_metadata({"tokenizer.ggml.model": "bert"})
    with pytest.raises(NotImplementedError, match="pre-tokenizer"):
        gguf.tokenizer_from_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe"})
