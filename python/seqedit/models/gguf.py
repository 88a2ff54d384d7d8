"""Reading GGUF metadata, and building the tokenizer a GGUF file describes.

transformers (5.17) dequantizes GGUF weights correctly, but its GGUF tokenizer import is not
usable as it is, so the tokenizer is built here from the file's metadata:
- special tokens: for SmolLM2 it names `<|im_start|>` as both bos and eos (the file says eos is
  `<|im_end|>`), sets no pad token, and ignores the file's `add_bos_token`;
- SentencePiece-BPE vocabularies (`tokenizer.ggml.model == "llama"`, Gemma 3): it builds a Unigram
  model from the scores, but those scores are BPE merge ranks, so words fall apart into single
  characters and the model produces garbage;
- it parses the file with `gguf.GGUFReader`, which takes minutes on a 262k-token vocabulary; the
  reader here takes a second or two.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from types import MappingProxyType

import numpy as np

_MAGIC = b"GGUF"
# GGUF value types -> (struct code, numpy dtype); 8 = string, 9 = array.
_SCALARS = MappingProxyType({
    0: ("B", np.uint8), 1: ("b", np.int8), 2: ("H", np.uint16), 3: ("h", np.int16),
    4: ("I", np.uint32), 5: ("i", np.int32), 6: ("f", np.float32), 7: ("?", np.bool_),
    10: ("Q", np.uint64), 11: ("q", np.int64), 12: ("d", np.float64),
})
_STRING, _ARRAY = 8, 9

# llama.cpp token types.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


def read_metadata(path: str | Path) -> dict:
    """All key/value metadata of a GGUF file: scalars as Python values, numeric arrays as numpy
    arrays, string arrays as lists of str. Tensor data is not touched."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file (magic {bytes(buf[:4])!r})")
        version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        pos = 24
        out = {}
        for _ in range(n_kv):
            key, pos = _read_string(buf, pos)
            (vtype,) = struct.unpack_from("<I", buf, pos)
            out[key], pos = _read_value(buf, pos + 4, vtype)
        return out


def _read_string(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    start = pos + 8
    return bytes(buf[start:start + n]).decode("utf-8", errors="replace"), start + n


def _read_value(buf, pos: int, vtype: int):
    if vtype in _SCALARS:
        code, _ = _SCALARS[vtype]
        return struct.unpack_from("<" + code, buf, pos)[0], pos + struct.calcsize(code)
    if vtype == _STRING:
        return _read_string(buf, pos)
    if vtype != _ARRAY:
        raise ValueError(f"unknown GGUF value type {vtype} at byte {pos}")
    etype, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if etype in _SCALARS:
        dtype = np.dtype(_SCALARS[etype][1]).newbyteorder("<")
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=pos).copy()
        return arr, pos + count * dtype.itemsize
    items = []
    for _ in range(count):
        item, pos = _read_value(buf, pos, etype)
        items.append(item)
    return items, pos


def spm_bpe_tokenizer(meta: dict):
    """A `tokenizers.Tokenizer` equivalent to llama.cpp's SentencePiece-BPE tokenizer for the
    vocabulary in `meta` (GGUF metadata with `tokenizer.ggml.model == "llama"`).

    llama.cpp repeatedly merges the adjacent pair whose concatenation is the highest-scoring
    vocabulary piece. A BPE model reproduces that when its merge list is ordered by the score of
    the merged piece; each piece contributes every split into two pieces that are themselves in
    the vocabulary.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    tokens = meta["tokenizer.ggml.tokens"]
    scores = np.asarray(meta["tokenizer.ggml.scores"], dtype=np.float64)
    types = np.asarray(meta.get("tokenizer.ggml.token_type", np.full(len(tokens), TOKEN_NORMAL)))
    vocab = {tok: i for i, tok in enumerate(tokens)}

    mergeable = types == TOKEN_NORMAL
    ranked = []
    for i in np.flatnonzero(mergeable):
        piece = tokens[i]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            li, ri = vocab.get(left), vocab.get(right)
            if li is not None and ri is not None:
                # Ties between splits of one piece: prefer the split whose halves rank highest.
                ranked.append((-scores[i], i, min(li, ri), left, right))
    ranked.sort()
    merges = [(left, right) for *_, left, right in ranked]

    unk = meta.get("tokenizer.ggml.unknown_token_id")
    model = models.BPE(
        vocab=vocab, merges=merges, unk_token=tokens[unk] if unk is not None else None,
        byte_fallback=bool((types == TOKEN_BYTE).any()), fuse_unk=True, ignore_merges=False,
    )
    tok = Tokenizer(model)
    # SentencePiece marks spaces with U+2581; `add_space_prefix` adds one before the first word.
    norm = [normalizers.Replace(" ", "\u2581")]
    if meta.get("tokenizer.ggml.add_space_prefix", False):
        norm.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(norm)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if meta.get("tokenizer.ggml.add_space_prefix", False):
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    # Control tokens (<bos>, <start_of_turn>, ...) and user-defined pieces are matched whole, as
    # SentencePiece does; only control tokens are "special" (skipped by decode(skip_special_tokens)).
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in np.flatnonzero(types == TOKEN_CONTROL)])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i in np.flatnonzero(types == TOKEN_USER_DEFINED)])
    return tok


# llama.cpp pre-tokenizer types that split digits one by one before the GPT-2 regex.
_DIGIT_SPLITTING_PRE = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"})
_PLAIN_GPT2_PRE = frozenset({"default", "gpt-2", "gpt2"})


def gpt2_bpe_tokenizer(meta: dict):
    """A `tokenizers.Tokenizer` for a byte-level BPE vocabulary (`tokenizer.ggml.model == "gpt2"`)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _DIGIT_SPLITTING_PRE | _PLAIN_GPT2_PRE:
        raise NotImplementedError(
            f"GGUF pre-tokenizer {pre!r} is not supported (supported: {sorted(_DIGIT_SPLITTING_PRE | _PLAIN_GPT2_PRE)})")
    tokens = meta["tokenizer.ggml.tokens"]
    types = np.asarray(meta.get("tokenizer.ggml.token_type", np.full(len(tokens), TOKEN_NORMAL)))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if pre in _DIGIT_SPLITTING_PRE else byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in np.flatnonzero(types == TOKEN_CONTROL)])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i in np.flatnonzero(types == TOKEN_USER_DEFINED)])
    return tok


def tokenizer_from_metadata(meta: dict):
    """A `PreTrainedTokenizerFast` equivalent to the GGUF's own tokenizer: its vocabulary, special
    tokens, bos/eos-adding habit, chat template and context length; right padding, and a pad token
    (eos when the file names none)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    kind = meta.get("tokenizer.ggml.model")
    if kind == "gpt2":
        backend = gpt2_bpe_tokenizer(meta)
    elif kind == "llama":
        backend = spm_bpe_tokenizer(meta)
    else:
        raise NotImplementedError(f"GGUF tokenizer model {kind!r} is not supported (gpt2 and llama are)")
    named = special_tokens(meta)
    bos = named.get("bos_token") if meta.get("tokenizer.ggml.add_bos_token", False) else None
    eos = named.get("eos_token") if meta.get("tokenizer.ggml.add_eos_token", False) else None
    if bos or eos:
        single = [*([bos] if bos else []), "$A", *([eos] if eos else [])]
        pair = [*single, *([bos] if bos else []), "$B", *([eos] if eos else [])]
        backend.post_processor = processors.TemplateProcessing(
            single=" ".join(single), pair=" ".join(pair),
            special_tokens=[(t, backend.token_to_id(t)) for t in dict.fromkeys(x for x in (bos, eos) if x)])
    kwargs = dict(named)
    kwargs.setdefault("pad_token", named.get("eos_token"))
    if meta.get("tokenizer.chat_template"):
        kwargs["chat_template"] = meta["tokenizer.chat_template"]
    context = meta.get(f"{meta.get('general.architecture', '')}.context_length")
    if context:
        kwargs["model_max_length"] = int(context)
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="right",
                                   clean_up_tokenization_spaces=False, **kwargs)


def special_tokens(meta: dict) -> dict[str, str]:
    """bos/eos/unk/pad token strings named by the GGUF metadata (those present)."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    out = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        idx = meta.get(f"tokenizer.ggml.{key}")
        if idx is not None and 0 <= idx < len(tokens):
            out[name] = tokens[idx]
    return out
