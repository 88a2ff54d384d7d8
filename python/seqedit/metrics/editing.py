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
from .scoring import generate_greedy, score_targets

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

    def _measure(self, model, ctx: EvalContext, requests: list, schedule: str, *,
                 fluency: bool) -> EvalResult:
        start = time.perf_counter()
        tok, cfg = ctx.tokenizer, self.config
        per: dict[tuple[str, str, str], list[float]] = {}

        def add(family: str, group: str, name: str, value: float | None) -> None:
            if value is not None and family in cfg.families:
                per.setdefault((family, group, name), []).append(float(value))

        neighbours = [(p, a, r.target_new) for r in requests for p, a in r.neighborhood_prompts]
        self._ensure_reference(model, ctx, neighbours)

        # One batched scoring pass and one batched generation pass for every prompt.
        pairs: list[tuple[str, str]] = []
        gen_prompts: list[str] = []
        budgets: list[int] = []
        plan = []
        extra = self._extra
        for r in requests:
            item = {"edit": [r.filled_prompt], "paraphrase": list(r.paraphrase_prompts)}
            entry = {"request": r, "score": {}, "gen": {}}
            for group, prompts in item.items():
                for p in prompts:
                    entry["score"].setdefault(group, []).append(len(pairs))
                    pairs.append((p, r.target_new))
                    if r.target_true is not None:
                        pairs.append((p, r.target_true))
                    entry["gen"].setdefault(group, []).append(len(gen_prompts))
                    gen_prompts.append(p)
                    budgets.append(self._budget(tok, r.target_new))
            for p, answer in r.neighborhood_prompts:
                entry["score"].setdefault("neighborhood", []).append(len(pairs))
                pairs += [(p, answer), (p, r.target_new)]
                entry["gen"].setdefault("neighborhood", []).append(len(gen_prompts))
                gen_prompts.append(p)
                budgets.append(self._budget(tok, answer))
            port = extra.portability.get(content_key(r)) if extra and cfg.portability else None
            if port is not None:
                entry["port"] = (len(pairs), len(gen_prompts), port)
                pairs.append((port.question, port.answer))
                gen_prompts.append(port.question)
                budgets.append(self._budget(tok, port.answer))
            plan.append(entry)
        cases = (extra.complete_cases(requests) if extra and cfg.multihop and schedule == AFTER_ALL
                 else [])
        case_plan = []
        for case in cases:
            rows = []
            for q in case.questions:
                prompt = f"Q: {q} A:"
                rows.append((len(pairs), len(gen_prompts)))
                pairs.append((prompt, case.answers[0]))
                gen_prompts.append(prompt)
                budgets.append(max(self._budget(tok, a) for a in case.answers))
            case_plan.append((case, rows))

        scores = score_targets(model, tok, pairs, batch_size=cfg.batch_size) if pairs else []
        want_gen = "generation" in cfg.families
        texts = self._generate(model, tok, gen_prompts, budgets) if want_gen else None
        items = []
        for entry in plan:
            r = entry["request"]
            row = {"case_id": r.case_id}
            for group in ("edit", "paraphrase"):
                binary, token, gen = [], [], []
                for k, g in zip(entry["score"].get(group, []), entry["gen"].get(group, [])):
                    new = scores[k]
                    token.append(new.token_accuracy)
                    if r.target_true is not None:
                        binary.append(float(new.prob > scores[k + 1].prob))
                        if group == "edit":
                            add("binary", group, "margin", new.prob - scores[k + 1].prob)
                    if texts is not None:
                        gen.append(float(starts_with_answer(texts[g][0], r.target_new)))
                name = "efficacy" if group == "edit" else "generalization"
                for family, values in (("binary", binary), ("token", token), ("generation", gen)):
                    if values:
                        add(family, group, name, sum(values) / len(values))
                        row[f"{family}.{name}"] = sum(values) / len(values)
            spec_b, loc_b, loc_t, spec_g, loc_g = [], [], [], [], []
            for (p, answer), k, g in zip(r.neighborhood_prompts,
                                         entry["score"].get("neighborhood", []),
                                         entry["gen"].get("neighborhood", [])):
                ref = self._reference[(p, answer, r.target_new)]
                ans, new = scores[k], scores[k + 1]
                spec_b.append(float(ans.prob > new.prob))
                loc_b.append(float((ans.prob > new.prob) == ref.prefers_answer))
                same = [a == b for a, b in zip(ans.top_tokens, ref.top_tokens)]
                loc_t.append(sum(same) / len(same))
                if texts is not None:
                    spec_g.append(float(starts_with_answer(texts[g][0], answer)))
                    loc_g.append(float(tuple(texts[g][1]) == ref.continuation))
            for family, name, values in (("binary", "specificity", spec_b),
                                         ("binary", "locality", loc_b),
                                         ("token", "locality", loc_t),
                                         ("generation", "specificity", spec_g),
                                         ("generation", "locality", loc_g)):
                if values:
                    add(family, "neighborhood", name, sum(values) / len(values))
                    row[f"{family}.{name}"] = sum(values) / len(values)
            if "port" in entry:
                k, g, port = entry["port"]
                add("token", "portability", "portability", scores[k].token_accuracy)
                if texts is not None:
                    add("generation", "portability", "portability",
                        float(starts_with_answer(texts[g][0], port.answer)))
            items.append(row)
        for case, rows in case_plan:
            add("token", "multihop", "multihop",
                sum(scores[k].token_accuracy for k, _ in rows) / len(rows))
            if texts is not None:  # MQuAKE counts a case when any of its questions is answered
                add("generation", "multihop", "multihop",
                    float(any(starts_with_answer(texts[g][0], list(case.answers))
                              for _, g in rows)))
        if fluency and want_gen and cfg.fluency_prompts and cfg.fluency_tokens:
            for value in self._fluency(model, tok, requests):
                add("generation", "edit", "fluency", value)

        metrics = []
        for (family, group, name), values in sorted(per.items()):
            mean, stderr = _mean(values)
            protocol = {"family": family, "schedule": schedule, "prompts": group}
            if family == "generation":
                protocol["decoding"] = (f"greedy, budget len(target)+{cfg.generation_slack}"
                                        if name != "fluency" else f"greedy, {cfg.fluency_tokens}"
                                        " tokens, n-gram entropy")
            if name == "locality":
                protocol["reference"] = "unedited model"
            elif name == "specificity":
                protocol["reference"] = "ground truth"
            metrics.append(Metric(name, mean, protocol, n=len(values), stderr=stderr))
        info = {"requests": len(requests), "multihop_cases": len(cases)}
        if schedule == AFTER_EACH:
            info["items"] = items
        return EvalResult(self.name, metrics, step=ctx.step, live_edits=ctx.live_edits,
                          schedule=schedule, seconds=time.perf_counter() - start, info=info)

    def _budget(self, tok, target: str) -> int:
        """Greedy tokens allowed for an answer: its own length plus the slack."""
        return len(target_ids(tok, target)) + self.config.generation_slack

    def _generate(self, model, tok, prompts: list[str], budgets: list[int]):
        ids = generate_greedy(model, tok, prompts, max_new_tokens=budgets,
                              batch_size=self.config.batch_size)
        return [(tok.decode(x, skip_special_tokens=True), x) for x in ids]

    def _ensure_reference(self, model, ctx: EvalContext, neighbours: list) -> None:
        todo = list(dict.fromkeys(n for n in neighbours if n not in self._reference))
        if not todo:
            return
        tok = ctx.tokenizer
        pairs = [x for p, a, new in todo for x in ((p, a), (p, new))]
        budgets = [self._budget(tok, a) for _, a, _ in todo]
        with ctx.unedited():
            scores = score_targets(model, tok, pairs, batch_size=self.config.batch_size)
            conts = generate_greedy(model, tok, [p for p, _, _ in todo], max_new_tokens=budgets,
                                    batch_size=self.config.batch_size)
        for i, key in enumerate(todo):
            ans, new = scores[2 * i], scores[2 * i + 1]
            self._reference[key] = _Reference(ans.prob > new.prob, ans.top_tokens,
                                              tuple(conts[i]))

    def _fluency(self, model, tok, requests: list) -> list[float]:
        chosen = sorted(requests, key=lambda r: hashlib.sha256(
            f"{self.config.seed}|fluency|{content_key(r)!r}".encode()).hexdigest())
        prompts = [r.filled_prompt for r in chosen[:self.config.fluency_prompts]]
        if not prompts:
            return []
        ids = generate_greedy(model, tok, prompts, max_new_tokens=self.config.fluency_tokens,
                              batch_size=self.config.batch_size)
        return [ngram_entropy(tok.decode(x, skip_special_tokens=True)) for x in ids]
