"""Turning (template, prompt, subject, target) into padded token batches with known positions.

Everything is built at the token-id level: a prompt is tokenised once (with the tokenizer's own
special tokens) and the target's ids are appended, so the positions we read and the tokens we
score are exactly the ones the model sees. The subject's last token is found from the
tokenizer's character offsets on the filled text, never by re-tokenising pieces of it (that
breaks for tokenizers that merge across the subject boundary or add a prefix space).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Row:
    """One sequence of a batch: ids plus where to read/inject (`lookup`) and what to score."""

    ids: list[int]
    lookup: int
    targets: list[tuple[int, int]]  # (position whose logits predict the token, token id)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [N, T] right-padded
    attention_mask: torch.Tensor  # [N, T]
    lookup: torch.Tensor  # [N] long


def fill(template: str, prompt: str, subject: str) -> tuple[str, int, int]:
    """`template` and `prompt` each hold one `{}`; returns the text and the subject's char span.

    Plain splitting instead of `str.format`: generated prefixes or prompts may contain braces.
    """
    t_pre, t_post = _split(template, "template")
    p_pre, p_post = _split(prompt, "prompt")
    start = len(t_pre) + len(p_pre)
    return t_pre + p_pre + subject + p_post + t_post, start, start + len(subject)


def _split(text: str, what: str) -> tuple[str, str]:
    if text.count("{}") != 1:
        raise ValueError(f"{what} must contain exactly one '{{}}' placeholder, got {text!r}")
    pre, post = text.split("{}")
    return pre, post


def target_ids(tokenizer, target: str) -> list[int]:
    """Ids of the target as it continues a prompt: with a leading space, as MEMIT feeds it."""
    text = target if target[:1].isspace() else " " + target
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return list(ids)


def encode_rows(tokenizer, texts: list[tuple[str, int, int]], suffixes: list[list[int]] | None = None) -> list[Row]:
    """Rows for filled texts (text, subject_start, subject_end), each followed by `suffixes[i]`.

    When a suffix (the target ids) is given, the row is prompt + suffix[:-1] (teacher forcing) and
    `targets` pairs each suffix token with the position that predicts it.
    """
    try:
        enc = tokenizer([t for t, _, _ in texts], return_offsets_mapping=True)
    except NotImplementedError as exc:  # slow tokenizers cannot report offsets
        raise TypeError("editors need a fast tokenizer (return_offsets_mapping)") from exc
    rows = []
    for i, (text, s0, s1) in enumerate(texts):
        ids, offsets = list(enc["input_ids"][i]), enc["offset_mapping"][i]
        lookup = subject_last_token(offsets, s0, s1, text)
        targets: list[tuple[int, int]] = []
        if suffixes is not None:
            suffix = suffixes[i]
            targets = [(len(ids) - 1 + j, tok) for j, tok in enumerate(suffix)]
            ids = ids + list(suffix[:-1])
        rows.append(Row(ids, lookup, targets))
    return rows


def through_lookup(rows: list[Row]) -> list[Row]:
    """Rows cut after their lookup token, for rows read only there (keys, block outputs, the KL
    prompt): with causal attention the later tokens cannot change what is read, so they would only
    cost compute — a quarter to a half of a key forward's tokens, and the KL row no longer sets
    the width of every optimisation step's suffix replay."""
    return [Row(r.ids[: r.lookup + 1], r.lookup, [t for t in r.targets if t[0] <= r.lookup]) for r in rows]


def subject_last_token(offsets, start: int, end: int, text: str) -> int:
    """Index of the last real token that starts before the subject's end (it holds its last char).

    Special tokens report empty spans and are skipped, so BOS-adding tokenizers work unchanged.
    """
    best = None
    for i, (a, b) in enumerate(offsets):
        if b > a and a < end:
            best = i
    if best is None or offsets[best][1] <= start:
        raise ValueError(f"cannot locate the subject span [{start}:{end}] among the tokens of {text!r}")
    return best


def pad(rows: list[Row], pad_id: int, device=None) -> Batch:
    """Right padding: positions of real tokens are unchanged, so batched = one-by-one."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        mask[i, : len(r.ids)] = 1
    lookup = torch.tensor([r.lookup for r in rows], dtype=torch.long)
    return Batch(ids.to(device), mask.to(device), lookup.to(device))


def pad_id(tokenizer) -> int:
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0
