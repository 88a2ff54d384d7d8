"""Batched model reads shared by the metrics: teacher-forced target scores and greedy generation.

Text convention (the one the editors optimise, `seqedit.editors._text`): a prompt is tokenised
with the tokenizer's special tokens and a target's own ids follow it, the target tokenised with a
leading space (`_text.target_ids`). So a probability here is exactly what an editor's loss pushed
on.

Every read goes through `read_prompts`: each prompt runs once, many prompts per left-padded
forward, and everything asked of it continues from that one prefill — the last position's logits
give every target's first token and the first greedy token; targets longer than one token continue
from a copy of the prompt's KV cache rows; the greedy continuation from the cache itself. The LM
head runs only at the positions that are read. So a prompt asked for two targets and a
generation costs one prompt forward, not three.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..editors._text import pad_id, target_ids


# A tail forward's logits (and their log-softmax) stay under this many bytes: with a 262k-token
# vocabulary (Gemma 3) 32 prompts × 5 choices × 20 tokens would otherwise be 27 GB.
LOGITS_BYTES = 1 << 30


@dataclass(frozen=True)
class TargetScore:
    """Teacher-forced reading of one target after one prompt.

    logprob: mean token log-prob; prob = exp(logprob), the per-token geometric mean (ROME/MEMIT's
    NLL metrics); token_hits: per target token, whether it is the top prediction (EasyEdit's
    token accuracy is their mean); top_tokens: the model's top prediction at each target position
    (what locality compares against); argmax: every target token is the top prediction.
    """

    logprob: float
    token_hits: tuple[bool, ...]
    top_tokens: tuple[int, ...]

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)

    @property
    def argmax(self) -> bool:
        return all(self.token_hits)

    @property
    def token_accuracy(self) -> float:
        return sum(self.token_hits) / len(self.token_hits)


@dataclass(frozen=True)
class Query:
    """One prompt to read: the scores of `targets` after it, and a greedy continuation of at most
    `budget` tokens (0: none)."""

    prompt: str
    targets: tuple[str, ...] = ()
    budget: int = 0


@dataclass(frozen=True)
class Reading:
    """What a Query asked for: one TargetScore per target, in order, and the greedy token ids
    (stopped at the tokenizer's EOS, which is not included)."""

    scores: tuple[TargetScore, ...]
    generated: tuple[int, ...]


def model_device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


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


def read_prompts(model: torch.nn.Module, tokenizer: Any, queries: list[Query], *,
                 batch_size: int = 32) -> list[Reading]:
    """One Reading per Query, in order (see `read_tokens`)."""
    budgets = [q.budget for q in queries]
    if any(not isinstance(b, int) or isinstance(b, bool) or b < 0 for b in budgets):
        raise ValueError("a greedy budget must be a non-negative int")
    heads = [list(tokenizer(q.prompt)["input_ids"]) for q in queries]
    tails = [[target_ids(tokenizer, t) for t in q.targets] for q in queries]
    return read_tokens(model, heads, tails, budgets, pad=pad_id(tokenizer),
                       eos=tokenizer.eos_token_id, batch_size=batch_size)


@torch.no_grad()
def read_tokens(model: torch.nn.Module, heads: list[list[int]], tails: list[list[list[int]]],
                budgets: list[int], *, pad: int, eos: int | None,
                batch_size: int = 32) -> list[Reading]:
    """For each prompt (token ids, non-empty) the scores of its target tails and a greedy
    continuation of at most its budget. Prompts go through in order of length (little padding),
    `batch_size` prompts per prefill."""
    device = model_device(model)
    order = sorted(range(len(heads)), key=lambda i: len(heads[i]))
    out: list[Reading | None] = [None] * len(heads)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        ids, mask, positions = left_padded([heads[i] for i in index], pad, device)
        res = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1)
        first = _log_softmax(res.logits[:, -1])
        rows = [(b, tail) for b, i in enumerate(index) for tail in tails[i]]
        # Scored before decoding, which extends the cache in place.
        scores = _score_tails(model, res.past_key_values, mask, first, rows, pad)
        generated = _decode(model, res.past_key_values, mask, positions, first,
                            [budgets[i] for i in index], pad, eos)
        k = 0
        for b, i in enumerate(index):
            n = len(tails[i])
            out[i] = Reading(tuple(scores[k:k + n]), tuple(generated[b]))
            k += n
    return out  # type: ignore[return-value]


def _score_tails(model, past, mask, first, rows, pad) -> list[TargetScore]:
    """A TargetScore for each (batch row, target ids): the first token from the prefill's last
    logits, the rest from forwards over copies of the owners' cache rows — as many rows per
    forward as keep its [rows, width, vocab] logits within LOGITS_BYTES."""
    owners = torch.tensor([b for b, _ in rows], dtype=torch.long, device=first.device)
    heads = torch.tensor([tail[0] for _, tail in rows], dtype=torch.long, device=first.device)
    # One gather for every row's first token: no device round trip per row.
    reads = [([chosen], [top]) for chosen, top in zip(first[owners, heads].double().tolist(),
                                                       first.argmax(-1)[owners].tolist())]
    longer = [k for k, (_, tail) in enumerate(rows) if len(tail) > 1]
    vocab = first.shape[-1]
    start = 0
    while start < len(longer):
        group, width = [], 0
        for k in longer[start:]:
            wider = max(width, len(rows[k][1]) - 1)
            if group and (len(group) + 1) * wider * vocab * 8 > LOGITS_BYTES:
                break
            group.append(k)
            width = wider
        start += len(group)
        logp = _tail_logprobs(model, past, mask, [rows[k] for k in group], width, pad)
        for j, k in enumerate(group):
            tail = rows[k][1]
            lp = logp[j, :len(tail) - 1]
            reads[k][0].extend(lp.gather(1, torch.tensor(tail[1:], device=lp.device)[:, None])
                               .squeeze(1).double().tolist())
            reads[k][1].extend(lp.argmax(-1).tolist())
        del logp
    out = []
    for (chosen, top), (_, tail) in zip(reads, rows):
        out.append(TargetScore(sum(chosen) / len(chosen),
                               tuple(t == want for t, want in zip(top, tail)),
                               tuple(int(t) for t in top)))
    return out


def _tail_logprobs(model, past, mask, rows, width, pad) -> torch.Tensor:
    """[len(rows), width, vocab] log-probs after feeding each tail but its last token, from a
    copy of the owners' cache rows."""
    device = mask.device
    owner = torch.tensor([b for b, _ in rows], device=device)
    cache = copy.deepcopy(past)
    cache.batch_select_indices(owner)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    fed = torch.zeros((len(rows), width), dtype=torch.long)
    for j, (_, tail) in enumerate(rows):
        ids[j, :len(tail) - 1] = torch.tensor(tail[:-1])  # the last one is predicted, not fed
        fed[j, :len(tail) - 1] = 1
    ids, fed = ids.to(device), fed.to(device)
    positions = mask.sum(-1)[owner][:, None] + torch.arange(width, device=device)
    logits = model(input_ids=ids, attention_mask=torch.cat([mask[owner], fed], dim=1),
                   position_ids=positions, past_key_values=cache, use_cache=True).logits
    return _log_softmax(logits)


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """In float32 at least (bf16/fp16 logits lose the small gaps that decide a preference)."""
    return logits.log_softmax(-1) if logits.dtype == torch.float64 else logits.float().log_softmax(-1)


def _decode(model, past, mask, positions, first, budgets, pad, eos) -> list[list[int]]:
    """Greedy ids per batch row, at most its budget, continuing the prefill in `past`."""
    steps = max(budgets, default=0)
    if steps == 0:
        return [[] for _ in budgets]
    device = first.device
    generated = torch.full((len(budgets), steps), -1, dtype=torch.long, device=device)
    done = torch.zeros(len(budgets), dtype=torch.bool, device=device)
    token, position = first.argmax(-1), positions[:, -1:]
    for t in range(steps):
        if t:
            position = position + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            res = model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                        past_key_values=past, use_cache=True, logits_to_keep=1)
            past = res.past_key_values
            token = res.logits[:, -1].argmax(-1)
        token = torch.where(done, torch.full_like(token, pad), token)
        generated[:, t] = torch.where(done, torch.full_like(token, -1), token)
        if eos is not None:
            done = done | (token == eos)
        if bool(done.all()):
            break
    out = []
    for row, b in enumerate(budgets):
        seq = [int(x) for x in generated[row, :b].tolist() if x >= 0]
        if eos is not None and eos in seq:
            seq = seq[:seq.index(eos)]
        out.append(seq)
    return out


def score_targets(model: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], *,
                  batch_size: int = 32) -> list[TargetScore]:
    """One TargetScore per (filled prompt, target), in order; pairs that share a prompt share
    its forward."""
    groups: dict[str, list[int]] = {}
    for k, (prompt, _) in enumerate(pairs):
        groups.setdefault(prompt, []).append(k)
    queries = [Query(p, tuple(pairs[k][1] for k in ks)) for p, ks in groups.items()]
    out: list[TargetScore | None] = [None] * len(pairs)
    for ks, reading in zip(groups.values(), read_prompts(model, tokenizer, queries,
                                                         batch_size=batch_size)):
        for k, score in zip(ks, reading.scores):
            out[k] = score
    return out  # type: ignore[return-value]


def generate_greedy(model: torch.nn.Module, tokenizer: Any, prompts: list[str], *,
                    max_new_tokens: int | list[int], batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations (token ids, at most `max_new_tokens` each — one budget for all or
    one per prompt), stopped early at the tokenizer's EOS."""
    budgets = ([max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int)
               else list(max_new_tokens))
    if len(budgets) != len(prompts):
        raise ValueError("max_new_tokens must be a non-negative int or one per prompt")
    readings = read_prompts(model, tokenizer, [Query(p, (), b) for p, b in zip(prompts, budgets)],
                            batch_size=batch_size)
    return [list(r.generated) for r in readings]
