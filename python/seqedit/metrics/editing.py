"""Editing metrics in three families, two schedules, each number labelled (docs/protocol.md).

Prompt groups: the edit prompt, its paraphrases, its neighbourhood prompts (facts the edit must not
change), zsRE portability and MQuAKE multi-hop questions (`extra_probes`), and fluency.

Families, side by side because they disagree (field notes §1.3):
- **binary** (ROME/MEMIT/PRUNE): P(new) > P(true) per prompt, P the per-token geometric mean;
  neighbours: *specificity* P(answer) > P(new) against the ground truth (ROME's NS, unedited
  ≈ 0.9) and *locality* = the same preference as the unedited model (unedited = 1).
- **token** (EasyEdit): teacher-forced token accuracy of target_new; locality = fraction of the
  neighbour answer's positions whose argmax equals the unedited model's.
- **generation**: greedy decoding with a budget of len(target tokens) + `generation_slack`, the
  target judged present by normalised prefix match (`answers`); locality = the continuation is the
  unedited model's, token for token; fluency = ROME's n-gram entropy of longer generations.

Schedules: *after-each* (`after_edit`, right after the edit, for the step's requests) and
*after-all* (`evaluate`: all live edits, or a seeded sample of at most `retention`). The unedited
model's answers (locality) are computed under `ctx.unedited()` — never the ground truth, never
the edited model — and cached per prompt for the evaluator's lifetime.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..editors._text import target_ids
from .answers import ngram_entropy, starts_with_answer
from .base import AFTER_ALL, AFTER_EACH, EvalContext, EvalResult, Metric, configure
from .extra_probes import ExtraProbes, content_key
from .scoring import Query, Reading, generate_greedy, read_prompts

FAMILIES = ("binary", "token", "generation")


@dataclass(frozen=True)
class EditingConfig:
    """families: which of binary/token/generation to compute. after_each: also score every edit
    right after it is made. retention: at most this many live edits per after-all checkpoint (a
    seeded sample, stable as the run grows); None = all. fluency_prompts/fluency_tokens: greedy
    generations of that length from a seeded sample of edit prompts (0 disables)."""

    families: tuple[str, ...] = FAMILIES
    after_each: bool = True
    retention: int | None = None
    generation_slack: int = 3
    fluency_prompts: int = 50
    fluency_tokens: int = 100
    portability: bool = True
    multihop: bool = True
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", tuple(self.families))
        bad = sorted(set(self.families) - set(FAMILIES))
        if bad or not self.families:
            raise ValueError(f"editing: families must be a non-empty subset of {FAMILIES}, "
                             f"got {list(self.families)}")
        for name in ("generation_slack", "fluency_prompts", "fluency_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"editing: {name} must be a non-negative int, got {value!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"editing: batch_size must be a positive int, got {self.batch_size!r}")
        if self.retention is not None and (not isinstance(self.retention, int)
                                           or self.retention < 1):
            raise ValueError(f"editing: retention must be a positive int or None, "
                             f"got {self.retention!r}")


@dataclass(frozen=True)
class _Reference:
    """The unedited model's answer to one neighbourhood prompt."""

    prefers_answer: bool  # P(answer) > P(target_new)
    top_tokens: tuple[int, ...]  # argmax at the answer's positions (teacher-forced)
    continuation: tuple[int, ...]  # greedy continuation within the budget


@dataclass(frozen=True)
class _Slot:
    """One prompt of a measurement: its group, the request (or multi-hop case) it belongs to,
    what is read from it, and the answers a generation may start with."""

    group: str
    owner: int
    query: Query
    answers: tuple[str, ...]


_NAMES = {"edit": "efficacy", "paraphrase": "generalization", "portability": "portability",
          "multihop": "multihop"}


def _average(values: list[float]) -> float:
    return sum(values) / len(values)


# MQuAKE counts a case as answered when any of its questions is.
_COMBINE = {("generation", "multihop"): max}


def _mean(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


class EditingEvaluator:
    name = "editing"

    def __init__(self, **options: Any) -> None:
        self.config = configure(EditingConfig, options, self.name)
        self._reference: dict[tuple[str, str, str], _Reference] = {}
        self._extra: ExtraProbes | None = None

    # -- the seam ------------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, ctx: EvalContext) -> None:
        if self.config.portability or self.config.multihop:
            self._extra = ExtraProbes.packaged()

    def evaluate(self, model: torch.nn.Module, ctx: EvalContext) -> EvalResult:
        requests = self._sample(ctx.live_requests())
        return self._measure(model, ctx, requests, AFTER_ALL, fluency=True)

    def after_edit(self, model: torch.nn.Module, ctx: EvalContext,
                   requests: list) -> EvalResult | None:
        if not self.config.after_each:
            return None
        return self._measure(model, ctx, list(requests), AFTER_EACH, fluency=False)

    # -- measuring -----------------------------------------------------------------------------
    def _sample(self, requests: list) -> list:
        m = self.config.retention
        if m is None or len(requests) <= m:
            return list(requests)
        # Rank by a seeded hash of the content: the chosen set changes little as the run grows.
        def rank(req):
            key = repr(content_key(req)).encode()
            return hashlib.sha256(f"{self.config.seed}|".encode() + key).hexdigest()
        chosen = {id(r) for r in sorted(requests, key=rank)[:m]}
        return [r for r in requests if id(r) in chosen]

    def _slots(self, tok, requests: list, schedule: str) -> list[_Slot]:
        """Every prompt to read, with what to ask of it: targets to score (binary/token
        families) and a greedy budget (generation family)."""
        cfg, extra = self.config, self._extra
        scored = bool({"binary", "token"} & set(cfg.families))
        generate = "generation" in cfg.families

        def slot(group, owner, prompt, targets, answers):
            budget = max(self._budget(tok, a) for a in answers) if generate else 0
            return _Slot(group, owner, Query(prompt, tuple(targets) if scored else (), budget),
                         tuple(answers))

        slots = []
        for i, r in enumerate(requests):
            pair = (r.target_new,) if r.target_true is None else (r.target_new, r.target_true)
            slots.append(slot("edit", i, r.filled_prompt, pair, [r.target_new]))
            slots += [slot("paraphrase", i, p, pair, [r.target_new]) for p in r.paraphrase_prompts]
            slots += [slot("neighborhood", i, p, (a, r.target_new), [a])
                      for p, a in r.neighborhood_prompts]
            port = extra.portability.get(content_key(r)) if extra and cfg.portability else None
            if port is not None:
                slots.append(slot("portability", i, port.question, [port.answer], [port.answer]))
        if extra and cfg.multihop and schedule == AFTER_ALL:
            for c, case in enumerate(extra.complete_cases(requests)):
                slots += [slot("multihop", c, f"Q: {q} A:", case.answers[:1], case.answers)
                          for q in case.questions]
        return slots

    def _judge(self, slot: _Slot, reading: Reading, text: str | None,
               request) -> dict[tuple[str, str], float]:
        """The per-prompt values, keyed (family, metric name)."""
        s, out = reading.scores, {}
        if slot.group == "neighborhood":
            ref = self._reference[(slot.query.prompt, slot.answers[0], request.target_new)]
            if s:
                prefers = s[0].prob > s[1].prob
                same = [a == b for a, b in zip(s[0].top_tokens, ref.top_tokens)]
                out[("binary", "specificity")] = float(prefers)
                out[("binary", "locality")] = float(prefers == ref.prefers_answer)
                out[("token", "locality")] = sum(same) / len(same)
            if text is not None:
                out[("generation", "specificity")] = float(starts_with_answer(text, slot.answers[0]))
                out[("generation", "locality")] = float(reading.generated == ref.continuation)
            return out
        name = _NAMES[slot.group]
        if s:
            out[("token", name)] = s[0].token_accuracy
            if len(s) > 1:
                out[("binary", name)] = float(s[0].prob > s[1].prob)
                if slot.group == "edit":
                    out[("binary", "margin")] = s[0].prob - s[1].prob
        if text is not None:
            out[("generation", name)] = float(starts_with_answer(text, list(slot.answers)))
        return out

    def _measure(self, model, ctx: EvalContext, requests: list, schedule: str, *,
                 fluency: bool) -> EvalResult:
        start = time.perf_counter()
        tok, cfg = ctx.tokenizer, self.config
        self._ensure_reference(model, ctx, [(p, a, r.target_new) for r in requests
                                            for p, a in r.neighborhood_prompts])
        slots = self._slots(tok, requests, schedule)
        readings = read_prompts(model, tok, [s.query for s in slots], batch_size=cfg.batch_size)
        # Per prompt, then per request (or multi-hop case) and group, then over those.
        owned: dict[tuple[str, int], dict[tuple[str, str], list[float]]] = {}
        for slot, reading in zip(slots, readings):
            text = (tok.decode(list(reading.generated), skip_special_tokens=True)
                    if slot.query.budget else None)
            request = requests[slot.owner] if slot.group != "multihop" else None
            cell = owned.setdefault((slot.group, slot.owner), {})
            for key, value in self._judge(slot, reading, text, request).items():
                cell.setdefault(key, []).append(value)
        per: dict[tuple[str, str, str], list[float]] = {}
        items = [{"case_id": r.case_id} for r in requests]
        for (group, owner), cell in owned.items():
            for (family, name), values in cell.items():
                combine = _COMBINE.get((family, group), _average)
                per.setdefault((family, group, name), []).append(combine(values))
                if group != "multihop":
                    items[owner][f"{family}.{name}"] = combine(values)
        if fluency and "generation" in cfg.families and cfg.fluency_prompts and cfg.fluency_tokens:
            per[("generation", "edit", "fluency")] = self._fluency(model, tok, requests)
        metrics = [self._metric(family, group, name, values, schedule)
                   for (family, group, name), values in sorted(per.items()) if values]
        info = {"requests": len(requests),
                "multihop_cases": len({o for g, o in owned if g == "multihop"})}
        if schedule == AFTER_EACH:
            info["items"] = items
        return EvalResult(self.name, metrics, step=ctx.step, live_edits=ctx.live_edits,
                          schedule=schedule, seconds=time.perf_counter() - start, info=info)

    def _metric(self, family: str, group: str, name: str, values: list[float],
                schedule: str) -> Metric:
        mean, stderr = _mean(values)
        protocol = {"family": family, "schedule": schedule, "prompts": group}
        if family == "generation":
            protocol["decoding"] = (f"greedy, budget len(target)+{self.config.generation_slack}"
                                    if name != "fluency" else
                                    f"greedy, {self.config.fluency_tokens} tokens, n-gram entropy")
        if name == "locality":
            protocol["reference"] = "unedited model"
        elif name == "specificity":
            protocol["reference"] = "ground truth"
        return Metric(name, mean, protocol, n=len(values), stderr=stderr)

    def _budget(self, tok, target: str) -> int:
        """Greedy tokens allowed for an answer: its own length plus the slack."""
        return len(target_ids(tok, target)) + self.config.generation_slack

    def _ensure_reference(self, model, ctx: EvalContext, neighbours: list) -> None:
        todo = list(dict.fromkeys(n for n in neighbours if n not in self._reference))
        if not todo:
            return
        tok = ctx.tokenizer
        queries = [Query(p, (a, new), self._budget(tok, a)) for p, a, new in todo]
        with ctx.unedited():
            readings = read_prompts(model, tok, queries, batch_size=self.config.batch_size)
        for key, reading in zip(todo, readings):
            ans, new = reading.scores
            self._reference[key] = _Reference(ans.prob > new.prob, ans.top_tokens,
                                              reading.generated)

    def _fluency(self, model, tok, requests: list) -> list[float]:
        chosen = sorted(requests, key=lambda r: hashlib.sha256(
            f"{self.config.seed}|fluency|{content_key(r)!r}".encode()).hexdigest())
        prompts = [r.filled_prompt for r in chosen[:self.config.fluency_prompts]]
        if not prompts:
            return []
        ids = generate_greedy(model, tok, prompts, max_new_tokens=self.config.fluency_tokens,
                              batch_size=self.config.batch_size)
        return [ngram_entropy(tok.decode(x, skip_special_tokens=True)) for x in ids]
