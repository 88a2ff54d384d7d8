"""Batched model reads shared by the metrics: teacher-forced target scores and greedy generation.

Text convention (the one the editors optimise, `seqedit.editors._text`): a prompt is tokenised
with the tokenizer's special tokens and a target's own ids follow it, the target tokenised with a
leading space (`_text.target_ids`). So a probability here is exactly what an editor's loss pushed
on. Many prompts go through one padded forward (right padding for scoring, left padding for
generation), so a thousand probes cost a few dozen forwards, not a thousand.
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
    """One TargetScore per (filled prompt, target), in order."""
    device = model_device(model)
    pad = pad_id(tokenizer)
    split = [(list(tokenizer(p)["input_ids"]), target_ids(tokenizer, t)) for p, t in pairs]
    out: list[TargetScore] = []
    for start in range(0, len(split), batch_size):
        chunk = split[start:start + batch_size]
        width = max(len(h) + len(t) - 1 for h, t in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (head, tail) in enumerate(chunk):
            seq = head + tail[:-1]  # the last target token is predicted, never fed
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, (head, tail) in enumerate(chunk):
            # Position t predicts token t+1: the target's tokens are read off from len(head)-1.
            pos = torch.arange(len(head) - 1, len(head) + len(tail) - 1, device=logits.device)
            logp = logits[row, pos].float().log_softmax(-1)
            target = torch.tensor(tail, device=logits.device)
            chosen = logp.gather(1, target[:, None]).squeeze(1)
            top = logp.argmax(-1)
            hits = tuple(bool(h) for h in (top == target).tolist())
            out.append(TargetScore(math.exp(float(chosen.mean())), all(hits), hits,
                                   tuple(int(t) for t in top.tolist())))
    return out


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
                        past_key_values=past, use_cache=True)
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
