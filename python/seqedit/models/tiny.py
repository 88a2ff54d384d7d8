"""Tiny random causal LMs and a byte-level tokenizer, built offline, for fast tests.

`tiny(arch)` gives a few-layer model of a real transformers class (so hooks, ModelSpec and editors
meet the real module layout) with random weights, and a tokenizer whose ids are
`<pad>=0, <bos>=1, <eos>=2`, then the 256 bytes (id = 3 + byte value): any text encodes, nothing
is unknown, and decode(encode(s)) == s.

Default sizes are deliberately awkward (hidden 64, MLP 160, 4 layers, vocab 300): the MLP input
width differs from the hidden width, so an orientation mix-up fails loudly.
"""

from __future__ import annotations

from types import MappingProxyType

import torch

SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_OFFSET = len(SPECIALS)
TOKENIZER_VOCAB = BYTE_OFFSET + 256

ARCHS = ("llama", "gpt2", "qwen2", "gemma3", "gptj", "gpt_neox")
# Gemma's own tokenizer prepends <bos> and the model misbehaves without it; mirror that habit so
# code handling a leading special token is exercised by tests.
_ADDS_BOS = frozenset({"gemma3"})

_DEFAULT_DIMS = MappingProxyType(dict(hidden_size=64, num_layers=4, intermediate_size=160, num_heads=4,
                                      num_kv_heads=2, vocab_size=300, max_positions=128))


def _byte_alphabet() -> list[str]:
    """The printable stand-in for each byte 0..255 used by byte-level BPE (GPT-2's convention:
    printable Latin-1 bytes stand for themselves, the rest are shifted past U+0100)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return [table[b] for b in range(256)]


def byte_tokenizer(*, add_bos: bool = False, model_max_length: int = 128):
    """A `PreTrainedTokenizerFast` over bytes: BPE with a 256-symbol vocabulary and no merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: BYTE_OFFSET + b for b, ch in enumerate(_byte_alphabet())})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        padding_side="right", model_max_length=model_max_length, clean_up_tokenization_spaces=False)


def _config(arch: str, d: dict):
    import transformers as tf

    h, n, ff, heads, kv = (d.pop(k) for k in
                           ("hidden_size", "num_layers", "intermediate_size", "num_heads", "num_kv_heads"))
    vocab, npos = d.pop("vocab_size"), d.pop("max_positions")
    ids = dict(pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    if arch in ("llama", "qwen2"):
        cls = tf.LlamaConfig if arch == "llama" else tf.Qwen2Config
        base = dict(hidden_size=h, num_hidden_layers=n, intermediate_size=ff, num_attention_heads=heads,
                    num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=npos)
    elif arch == "gemma3":
        cls = tf.Gemma3TextConfig
        base = dict(hidden_size=h, num_hidden_layers=n, intermediate_size=ff, num_attention_heads=heads,
                    num_key_value_heads=kv, head_dim=h // heads, vocab_size=vocab,
                    max_position_embeddings=npos, sliding_window=npos, query_pre_attn_scalar=h // heads)
    elif arch == "gpt2":
        cls = tf.GPT2Config
        base = dict(n_embd=h, n_layer=n, n_inner=ff, n_head=heads, vocab_size=vocab, n_positions=npos,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    elif arch == "gptj":
        cls = tf.GPTJConfig
        base = dict(n_embd=h, n_layer=n, n_inner=ff, n_head=heads, vocab_size=vocab, n_positions=npos,
                    rotary_dim=h // heads // 2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    elif arch == "gpt_neox":
        cls = tf.GPTNeoXConfig
        base = dict(hidden_size=h, num_hidden_layers=n, intermediate_size=ff, num_attention_heads=heads,
                    vocab_size=vocab, max_position_embeddings=npos, hidden_dropout=0.0, attention_dropout=0.0)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    # Remaining keys go to the config untouched, e.g. tie_word_embeddings=False.
    return cls(**{**base, **ids, **d})


def tiny(arch: str, *, seed: int = 0, add_bos: bool | None = None, **dims):
    """A small random `arch` model (float32, eval mode, parameters frozen) and a byte tokenizer.

    `dims` may set hidden_size, num_layers, intermediate_size, num_heads, num_kv_heads, vocab_size,
    max_positions (defaults in `_DEFAULT_DIMS`); other keys are passed to the transformers config.
    `add_bos` defaults to the family's habit (True for gemma3 only). The caller's RNG state is left
    untouched: weights come from a forked generator seeded with `seed`.
    """
    from transformers import AutoModelForCausalLM

    d = {**_DEFAULT_DIMS, **dims}
    if d["vocab_size"] < TOKENIZER_VOCAB:
        raise ValueError(f"vocab_size must be >= {TOKENIZER_VOCAB} to cover the byte tokenizer, got {d['vocab_size']}")
    npos = d["max_positions"]
    config = _config(arch, d)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval().requires_grad_(False)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.bos_token_id = BOS_ID
    tokenizer = byte_tokenizer(add_bos=arch in _ADDS_BOS if add_bos is None else add_bos, model_max_length=npos)
    return model, tokenizer


__all__ = ["ARCHS", "byte_tokenizer", "tiny"]
