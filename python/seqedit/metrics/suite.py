"""What the general and safety evaluators share: packaged tasks run on the current model, the
unedited model's scores cached on disk, the no-signal rule and muting detection.

No-signal: a task's primary score on the unedited model is not *clearly* above its chance level
when `unedited - chance <= signal_sigmas * stderr` (2 standard errors by default; the stderr is
lm-eval's, or the binomial sqrt(p(1-p)/n) where it gives none). Its later drops say nothing about
the edits, and `info[task]["no_signal"]` says so. Perplexity has no chance level (None).

Muting: an edited model that collapsed answers the same thing everywhere; on a balanced task that
scores the majority share and can even look better (ToxiGen's 0.5667 in "Should We Really Edit
Language Models?"). A task is flagged `muted` when one answer (a choice index, or one generated
text) or the empty generation exceeds `mute_threshold` of its items.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from . import harness
from .base import EvalContext, EvalResult, Metric

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteConfig:
    """tasks: packaged task names (see `harness.available_tasks()`). limit: documents per task,
    a seeded subset (None: all); task_limits: per-task overrides of it, e.g. {"wikitext": 8}
    (WikiText-2 documents are whole articles, ~5,000 tokens each). seed: which subset.
    batch_size: lm-eval's batch. max_length: context window for lm-eval (None: the model's).
    signal_sigmas / mute_threshold: the rules in the module doc."""

    tasks: tuple[str, ...] = ()
    limit: int | None = 200
    task_limits: dict[str, int | None] = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 16
    max_length: int | None = None
    signal_sigmas: float = 2.0
    mute_threshold: float = 0.9

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "task_limits", MappingProxyType(dict(self.task_limits)))


class SuiteEvaluator:
    """Base of `GeneralEvaluator` and `SafetyEvaluator`; subclasses set `name`, `config_cls`,
    and may add measurements that are not lm-eval tasks (`_extra`)."""

    name = "suite"
    config_cls: type = SuiteConfig
    known_tasks: tuple[str, ...] = ()
    # Limits for tasks whose documents are far larger than an item (unless task_limits says).
    default_task_limits: MappingProxyType = MappingProxyType({})

    def __init__(self, **options: Any) -> None:
        from .base import configure

        self.config = configure(self.config_cls, options, self.name)
        unknown = [t for t in self.config.tasks if t not in self.known_tasks]
        if unknown:
            raise ValueError(f"evaluator {self.name!r}: unknown task(s) {unknown}; "
                             f"known: {list(self.known_tasks)}")
        stray = sorted(set(self.config.task_limits) - set(self.known_tasks))
        if stray:
            raise ValueError(f"evaluator {self.name!r}: task_limits names unknown task(s) "
                             f"{stray}; known: {list(self.known_tasks)}")
        for task in self.config.tasks:
            limit = self._limit(task)
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                      or limit < 1):
                raise ValueError(f"evaluator {self.name!r}: the limit of task {task!r} must be a "
                                 f"positive int or None, got {limit!r}")
        self._specs = [harness.load_spec(t) for t in self.config.tasks if t in self._lm_tasks()]
        self._unedited: dict[str, Any] | None = None

    def _limit(self, task: str) -> int | None:
        if task in self.config.task_limits:
            return self.config.task_limits[task]
        return self.default_task_limits.get(task, self.config.limit)

    def _docs(self) -> dict[str, list[dict]]:
        return {s.name: harness.task_docs(s, self._limit(s.name), self.config.seed)
                for s in self._specs}

    def _lm_tasks(self) -> set[str]:
        return set(harness.available_tasks())

    # -- measurement -----------------------------------------------------------------------

    def _measure(self, model: torch.nn.Module, ctx: EvalContext) -> dict[str, Any]:
        """task → {"n", "scores": {metric: [value, stderr]}, "chance", "muting", ...}."""
        cfg, out = self.config, {}
        if self._specs:
            docs = self._docs()
            runs = harness.run_tasks(model, ctx.tokenizer, self._specs, docs, seed=cfg.seed,
                                     batch_size=cfg.batch_size, max_length=cfg.max_length)
            for spec in self._specs:
                run = runs[spec.name]
                out[spec.name] = {
                    "n": run.n, "scores": {m: list(v) for m, v in run.scores.items()},
                    "primary": spec.primary, "higher_is_better": spec.higher_is_better,
                    "chance": harness.chance_level(spec, docs[spec.name]),
                    "harness": harness.HARNESS,
                    "num_fewshot": spec.config.get("num_fewshot", 0),
                    "muting": harness.muting(run.answers, cfg.mute_threshold)}
        out.update(self._extra(model, ctx))
        return out

    def _extra(self, model: torch.nn.Module, ctx: EvalContext) -> dict[str, Any]:
        return {}

    def _extra_fingerprint(self) -> dict[str, Any]:
        return {}

    def _cache_payload(self) -> dict[str, Any]:
        cfg, docs = self.config, self._docs()
        tasks = {}
        for spec in self._specs:
            text = (harness.TASK_DIR / f"{spec.name}.yaml").read_bytes()
            blob = json.dumps(docs[spec.name], sort_keys=True, ensure_ascii=False).encode()
            tasks[spec.name] = [hashlib.sha256(text).hexdigest(), hashlib.sha256(blob).hexdigest()]
        return {"tasks": tasks, "limits": {t: self._limit(t) for t in cfg.tasks}, "seed": cfg.seed,
                "max_length": cfg.max_length,
                "mute_threshold": cfg.mute_threshold, **self._extra_fingerprint()}

    # -- the Evaluator seam ----------------------------------------------------------------

    def prepare(self, model: torch.nn.Module, ctx: EvalContext) -> None:
        """The unedited model's scores, loaded from the cache when the same weights were
        measured the same way before (weights fingerprint + task files and documents + limit +
        seed + seqedit and harness versions), else measured and stored."""
        directory = harness.cache_dir(ctx.cache_dir)
        key = harness.cache_key(harness.fingerprint(model), self.name, self._cache_payload())
        cached = harness.load_cached(directory, key)
        if cached is not None:
            logger.info("%s: unedited scores from the cache (%s)", self.name, key)
            self._unedited = cached
            return
        logger.info("%s: measuring the unedited model", self.name)
        self._unedited = self._measure(model, ctx)
        harness.store_cached(directory, key, self._unedited)

    def evaluate(self, model: torch.nn.Module, ctx: EvalContext) -> EvalResult:
        self._require_unedited()
        start = time.perf_counter()
        measured = self._measure(model, ctx)
        return self._result(measured, ctx, time.perf_counter() - start)

    def unedited_result(self, ctx: EvalContext) -> EvalResult:
        """The unedited model's scores as `evaluate` would report them, from `prepare` (nothing
        is measured again)."""
        return self._result(self._require_unedited(), ctx, 0.0)

    def _require_unedited(self) -> dict[str, Any]:
        if self._unedited is None:
            raise RuntimeError(f"evaluator {self.name!r}: call prepare(model, ctx) on the "
                               "unedited model first")
        return self._unedited

    def _result(self, measured: dict[str, Any], ctx: EvalContext, seconds: float) -> EvalResult:
        metrics, info = [], {}
        for task, m in measured.items():
            base = self._unedited.get(task, {})
            protocol = {"family": self.name, "task": task, "harness": m["harness"],
                        "limit": self._limit(task), "seed": self.config.seed,
                        "num_fewshot": m["num_fewshot"]}
            for metric, (value, stderr) in m["scores"].items():
                metrics.append(Metric(f"{task}.{metric}", value, {**protocol, "metric": metric},
                                      n=m["n"], stderr=stderr,
                                      note=None if value is not None else "not measurable"))
            mute = m["muting"]
            if mute is not None:
                metrics.append(Metric(f"{task}.modal_share", mute["modal_share"],
                                      {**protocol, "metric": "modal_share",
                                       "threshold": self.config.mute_threshold}, n=m["n"]))
            unedited = (base.get("scores", {}).get(m["primary"]) or [None, None])
            info[task] = {
                "unedited": unedited[0], "unedited_stderr": unedited[1], "chance": m["chance"],
                "no_signal": no_signal(unedited[0], unedited[1], m["chance"], base.get("n"),
                                       m["higher_is_better"], self.config.signal_sigmas),
                "primary": m["primary"], "muting": mute, "muted": bool(mute and mute["muted"]),
                "muted_unedited": bool((base.get("muting") or {}).get("muted"))}
        info["muted_tasks"] = sorted(t for t, i in info.items() if i["muted"])
        return EvalResult(self.name, metrics, step=ctx.step, live_edits=ctx.live_edits,
                          seconds=seconds, info=info)


def no_signal(score: float | None, stderr: float | None, chance: float | None, n: int | None,
              higher_is_better: bool = True, sigmas: float = 2.0) -> bool | None:
    """True when `score` is not more than `sigmas` standard errors above `chance`; None when the
    rule does not apply (no chance level, lower-is-better metric, no score)."""
    if score is None or chance is None or not higher_is_better:
        return None
    if stderr is None:
        if not n or not 0.0 <= score <= 1.0:
            return None
        stderr = math.sqrt(score * (1.0 - score) / n)
    return score - chance <= sigmas * stderr
