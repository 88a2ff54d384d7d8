"""Batched model reads shared by the metrics: teacher-forced target scores and greedy generation.

Text convention (the one the editors optimise, `seqedit.editors._text`): a prompt is tokenised
with the tokenizer's special tokens and a target's own ids follow it, the target tokenised with a
leading space (`_text.target_ids`). So a probability here is exactly what an editor's loss pushed
on. Many prompts go through one left-padded forward, so a thousand probes cost a few dozen
forwards, not a thousand, and the LM head runs only at the positions that are read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..editors._text import pad_id, target_ids


@dataclass(frozen=True)
class TargetScore:
    """Teacher-forced reading of one target after one prompt.

    prob: exp(mean token log-prob), the per-token geometric mean (ROME/MEMIT's NLL metrics);
    argmax: every target token is the model's top prediction; token_hits: per target token,
    whether it is the top prediction (EasyEdit's token accuracy is their mean); top_tokens: the
    model's top prediction at each target position (what locality compares against).
    """

    prob: float
    argmax: bool
    token_hits: tuple[bool, ...]
    top_tokens: tuple[int, ...]

    @property
    def token_accuracy(self) -> float:
        return sum(self.token_hits) / len(self.token_hits)


def model_device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def score_targets(model: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], *,
                  batch_size: int = 32) -> list[TargetScore]:
    """One TargetScore per (filled prompt, target), in order.

    Rows are left padded, so every row's target positions are its last ones and the LM head runs
    only there (`logits_to_keep`): on a 49k-token vocabulary the head over every position is
    most of a scoring forward. Rows go through in order of length, so batches pad little.
    """
    device = model_device(model)
    pad = pad_id(tokenizer)
    split = [(list(tokenizer(p)["input_ids"]), target_ids(tokenizer, t)) for p, t in pairs]
    order = sorted(range(len(split)), key=lambda i: len(split[i][0]) + len(split[i][1]))
    out: list[TargetScore | None] = [None] * len(split)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        # The last target token is predicted, never fed.
        ids, mask, positions = left_padded([split[i][0] + split[i][1][:-1] for i in index], pad,
                                           device)
        keep = max(len(split[i][1]) for i in index)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=keep).logits
        for row, i in enumerate(index):
            tail = split[i][1]
            logp = logits[row, keep - len(tail):].float().log_softmax(-1)
            target = torch.tensor(tail, device=logits.device)
            chosen = logp.gather(1, target[:, None]).squeeze(1)
            top = logp.argmax(-1)
            hits = tuple(bool(h) for h in (top == target).tolist())
            out[i] = TargetScore(math.exp(float(chosen.mean())), all(hits), hits,
                                 tuple(int(t) for t in top.tolist()))
    return out  # type: ignore[return-value]


def left_padded(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, ...]:
    """(ids, attention mask, position ids) of token lists padded on the left, so that every
    row's last real token sits in the last column (where generation continues)."""
    width = max(len(seq) for seq in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate_greedy(model: torch.nn.Module, tokenizer: Any, prompts: list[str], *,
                    max_new_tokens: int | list[int], batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations (token ids, at most `max_new_tokens` each — one budget for all or
    one per prompt), many prompts per forward with left padding and a KV cache. Generation
    stops early for a row at the tokenizer's EOS."""
    budgets = ([max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int)
               else list(max_new_tokens))
    if len(budgets) != len(prompts) or any(b < 0 for b in budgets):
        raise ValueError("max_new_tokens must be a non-negative int or one per prompt")
    device = model_device(model)
    pad = pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    encoded = [list(tokenizer(p)["input_ids"]) for p in prompts]
    out: list[list[int]] = []
    for start in range(0, len(encoded), batch_size):
        chunk, budget = encoded[start:start + batch_size], budgets[start:start + batch_size]
        steps = max(budget, default=0)
        if steps == 0:
            out.extend([] for _ in chunk)
            continue
        ids, mask, positions = left_padded(chunk, pad, device)
        generated = torch.full((len(chunk), steps), -1, dtype=torch.long, device=device)
        done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
        past, step_ids, step_pos = None, ids, positions
        for t in range(steps):
            res = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                        past_key_values=past, use_cache=True, logits_to_keep=1)
            past = res.past_key_values
            token = res.logits[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            generated[:, t] = torch.where(done, torch.full_like(token, -1), token)
            if eos is not None:
                done = done | (token == eos)
            if bool(done.all()):
                break
            step_ids = token[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        for row, b in enumerate(budget):
            seq = [int(x) for x in generated[row, :b].tolist() if x >= 0]
            if eos is not None and eos in seq:
                seq = seq[:seq.index(eos)]
            out.append(seq)
    return out
