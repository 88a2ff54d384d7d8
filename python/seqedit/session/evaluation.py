"""Running a session's evaluators on schedule and keeping their results in the ledger.

Schedule: every evaluator runs on the unedited model (step 0), whenever the step count reaches a
multiple of `eval_every`, at the end of every `edit()` call, and on `session.evaluate()`; those
results are `eval` lines of the ledger. Evaluators with `after_edit` also run inside each edit step
and their results travel in the edit's own line. A result is identified by (step, evaluator):
one that the ledger holds is never recomputed (resume repeats no evaluation), and one that is due
but missing after a kill is run as soon as the session continues (none is lost). Results are
keyed by the model they measured — the ledger's `state`, its count of edit and rollback lines —
so an evaluation after a rollback is a new one even though the step count did not move.
"""
from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from .._cache_root import cache_root
from .._version import __version__
from ..data import EditRequest
from ..metrics.base import EvalContext, EvalResult, Evaluator, config_dict
from .base_weights import BaseWeights
from .ledger import Ledger

log = logging.getLogger("seqedit.session")


class EvaluationStop(RuntimeError):
    """An evaluator asked to stop the run (e.g. a weight-health alarm with `stop_on_alarm`);
    the result that asked is in the ledger and in `session.evaluations`."""

    def __init__(self, results: list[EvalResult]) -> None:
        alarms = [a for r in results for a in r.info.get("alarms", [])]
        super().__init__("an evaluator stopped the run: " + ("; ".join(alarms) or
                                                             ", ".join(r.evaluator for r in results)))
        self.results = results


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def check_evaluators(evaluators: Any, eval_every: Any) -> list[Evaluator]:
    evaluators = list(evaluators or [])
    names = []
    for ev in evaluators:
        if not (isinstance(getattr(ev, "name", None), str) and callable(getattr(ev, "prepare", None))
                and callable(getattr(ev, "evaluate", None))):
            raise TypeError(f"{ev!r} is not an Evaluator (needs name, prepare, evaluate); build "
                            "one with seqedit.metrics.create(name, ...)")
        names.append(ev.name)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"evaluator names must be unique within a session: {repeated} given "
                         "twice (results are keyed by step and evaluator name)")
    if eval_every is not None and (not isinstance(eval_every, int) or isinstance(eval_every, bool)
                                   or eval_every < 1):
        raise ValueError(f"eval_every must be a positive int or None, got {eval_every!r}")
    return evaluators


class Evaluations:
    """The session's evaluators, their context, and the results recorded so far."""

    def __init__(self, evaluators: list[Evaluator], every: int | None, *, model: torch.nn.Module,
                 tokenizer: Any, spec: Any, seed: int, ledger: Ledger, base: BaseWeights,
                 live_requests: Callable[[], list[EditRequest]], cache_dir: Path | None = None):
        self.evaluators, self.every = evaluators, every
        self._model, self._ledger, self._base = model, ledger, base
        self._ctx = EvalContext(tokenizer, spec, base_weight=base.__getitem__,
                                unedited=base.unedited, live_requests=live_requests, seed=seed,
                                cache_dir=cache_dir or cache_root() / "eval")

    def prepare(self, weights: list[str]) -> None:
        """Once, on the unedited model (before any edit, and before replay on resume)."""
        self._base.snapshot(weights)
        self._ctx.weights = self._base.names
        for ev in self.evaluators:
            log.info("preparing evaluator %s on the unedited model", ev.name)
            ev.prepare(self._model, self._ctx)

    def _at(self, step: int, live: int) -> EvalContext:
        self._ctx.step, self._ctx.live_edits = step, live
        return self._ctx

    def after_edit(self, requests: list[EditRequest], step: int,
                   live: int) -> dict[str, dict[str, Any]]:
        """After-each results for the step's edit line, keyed by evaluator name."""
        out = {}
        for ev in self.evaluators:
            hook = getattr(ev, "after_edit", None)
            if hook is not None:
                result = hook(self._model, self._at(step, live), requests)
                if result is not None:
                    out[ev.name] = result.to_dict()
        return out

    def due(self, step: int) -> bool:
        return bool(self.evaluators) and (step == 0 or (self.every is not None
                                                        and step % self.every == 0))

    def run(self, step: int, live: int) -> list[EvalResult]:
        """Each evaluator's result on the current model (at `step`): the ledger's if it has
        one, else measured now and appended as an `eval` line."""
        results = []
        for ev in self.evaluators:
            recorded = self._ledger.evaluation(ev.name)
            if recorded is not None:
                results.append(EvalResult.from_dict(recorded["result"]))
                continue
            log.info("step %d: evaluating %s (%d live edits)", step, ev.name, live)
            reuse = getattr(ev, "unedited_result", None)
            if step == 0 and live == 0 and reuse is not None:
                # Step 0 is the unedited model its `prepare` has just measured (or found cached
                # for these weights): the same scores again would cost as long.
                result = reuse(self._at(step, live))
                result.info["measured"] = "by prepare, on the unedited model"
            else:
                result = ev.evaluate(self._model, self._at(step, live))
            result.step, result.live_edits = step, live
            self._ledger.append({"type": "eval", "step": step, "state": self._ledger.state,
                                 "live_edits": live,
                                 "evaluator": ev.name, "config": config_dict(ev.config),
                                 "time": _now(), "seqedit_version": __version__,
                                 "result": result.to_dict()})
            log.info("step %d: %s evaluated in %.1f s", step, ev.name, result.seconds)
            results.append(result)
        return results

    def results(self) -> list[EvalResult]:
        """Every recorded after-all result, in ledger order."""
        return [EvalResult.from_dict(r["result"]) for r in self._ledger.evaluations()]


def stop_requested(results: list[EvalResult]) -> list[EvalResult]:
    return [r for r in results if r.info.get("stop")]
