"""Teacher-forced target probabilities, the before/after numbers every ledger line carries.

Text convention, the one the editors optimise (`seqedit.editors._text`): the filled prompt is
tokenised with the tokenizer's special tokens and the target's own ids follow it, the target
tokenised with a leading space (as MEMIT feeds it). So a probability here is exactly what the
editor's loss pushed on.
"""
from __future__ import annotations

import math
from typing import Any

import torch


def _split(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    text = target if target[:1].isspace() else " " + target
    tail = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not tail:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return list(tokenizer(prompt)["input_ids"]), tail


@torch.no_grad()
def score_targets(model: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], *,
                  batch_size: int = 32) -> list[tuple[float, bool]]:
    """For each (filled prompt, target): (P, argmax) where P = exp(mean token log-prob) — the
    per-token geometric mean, as in ROME/MEMIT's NLL metrics — and argmax says whether every
    target token is the model's top prediction under teacher forcing."""
    device = model.get_input_embeddings().weight.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    split = [_split(tokenizer, p, t) for p, t in pairs]
    out: list[tuple[float, bool]] = []
    for start in range(0, len(split), batch_size):
        chunk = split[start:start + batch_size]
        width = max(len(h) + len(t) for h, t in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (head, tail) in enumerate(chunk):
            n = len(head) + len(tail)
            ids[row, :n] = torch.tensor(head + tail)
            mask[row, :n] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, (head, tail) in enumerate(chunk):
            # Position t predicts token t+1: the target's tokens are read off from len(head)-1.
            pos = torch.arange(len(head) - 1, len(head) + len(tail) - 1, device=logits.device)
            logp = logits[row, pos].float().log_softmax(-1)
            target = torch.tensor(tail, device=logits.device)
            chosen = logp.gather(1, target[:, None]).squeeze(1)
            out.append((math.exp(float(chosen.mean())), bool((logp.argmax(-1) == target).all())))
    return out


def request_probabilities(model: torch.nn.Module, tokenizer: Any, requests: list) -> list[dict]:
    """{"new": P(target_new), "true": P(target_true) or None, "new_argmax": bool} per request,
    all requests in one batched pass."""
    pairs, owners = [], []
    for i, req in enumerate(requests):
        for which in ("new", "true"):
            target = req.target_new if which == "new" else req.target_true
            if target is not None:
                pairs.append((req.filled_prompt, target))
                owners.append((i, which))
    rows: list[dict] = [{"new": None, "true": None, "new_argmax": None} for _ in requests]
    for (i, which), (p, top) in zip(owners, score_targets(model, tokenizer, pairs)):
        rows[i][which] = p
        if which == "new":
            rows[i]["new_argmax"] = top
    return rows


def success(req: Any, post: dict) -> bool:
    """CounterFact efficacy when the old answer is known: P(new) > P(true) after the edit;
    otherwise every target_new token must be the argmax (EasyEdit's strict reading)."""
    if req.target_true is not None:
        return post["new"] > post["true"]
    return bool(post["new_argmax"])
