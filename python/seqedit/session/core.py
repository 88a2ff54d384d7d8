"""EditSession: a sequence of edits on one in-memory model, with a ledger to undo and resume.

One step (a request, or a batch of them), stage by stage (`_step`): probe P(target) → compute
(editor) → check (refuse a delta that is empty, zero or non-finite: recorded, weights untouched) →
write the delta file durably → apply it with one fused `rank_update_list_` → editor.commit →
probe again → after-each evaluators → append the ledger line (the commit point). An exception
before the commit point undoes the apply in memory, so the model and the ledger always agree; a
killed process loses only the model, which `resume` rebuilds from the base weights and the ledger.
Scheduled evaluations (`evaluation`) run between steps. See `seqedit.session.ledger` for the
directory format.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import numbers
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Iterator

import torch

from .._progress import Progress
from .._version import __version__
from ..data import EditRequest
from ..editors.base import Delta, EditContext, SolveError
from ..metrics.base import EvalResult
from . import peft_export
from ..editors.accumulated import AccumulatedDelta
from . import guarding
from .base_weights import BaseWeights
from .checks import (MAX_DELTA_RATIO, apply_delta, as_requests, check_editor,
                     check_session_options, check_structure, refusal, split_done,
                     validate_requests)
from .evaluation import EvaluationStop, Evaluations, check_evaluators, stop_requested
from .hashing import config_dict, config_hash, jsonable, request_key, tensor_fingerprint
from .integrity import model_fingerprint
from .ledger import FORMAT, FORMAT_VERSION, Ledger, LedgerError
from .moments import SecondMoments
from ..metrics.probe import request_probabilities, success
from .reader import read_run
from .replay import (check_base_model, check_config_hashes, check_same_editor,
                     model_identity, portable_memo, replay, restore_memo)
from .results import APPLIED, REFUSED, SKIPPED, EditRefused, EditResult, RollbackError

log = logging.getLogger("seqedit.session")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class _Clock:
    """Seconds per named stage of a step."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = now - self._last
        self._last = now

    def total(self) -> dict[str, float]:
        self.times["total_s"] = sum(v for k, v in self.times.items() if k != "total_s")
        return self.times


class EditSession:
    """Sequential editing of `model` in place with `method` (a registry name or an Editor).

    stats: key statistics for editors that need them: a dict `layer -> C` (or `(C, count)`), a
      callable `layer -> C`, or None to compute them with `seqedit.stats.second_moments` (options
      in `stats_options`) once, on the unedited weights, for the layers the editor asks for.
    ledger_dir: where the ledger lives (created; must not hold a session already — use
      `resume` for that). None: a temporary directory removed by `close()`.
    evaluators: damage measurements (`seqedit.metrics.create(...)`), prepared on the unedited
      model and run at step 0, every `eval_every` steps (None: only at step 0 and at the end of
      each `edit()` call) and on `evaluate()`; see `seqedit.session.evaluation`.
    config: the editor's hyperparameters when `method` is a name.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, method: Any = "memit", *,
                 spec: Any = None, stats: Any = None, stats_options: dict | None = None,
                 ledger_dir: str | Path | None = None, seed: int = 0,
                 evaluators: Any = None, eval_every: int | None = None, guards: Any = None,
                 max_delta_ratio: float = MAX_DELTA_RATIO, **config: Any) -> None:
        evaluators = check_evaluators(evaluators, eval_every)
        check_session_options(seed, max_delta_ratio)
        self._tmp = self._ledger = None
        self._setup(model, tokenizer, method, spec, stats, stats_options, seed, config)
        self._max_delta_ratio = float(max_delta_ratio)
        self._start_guards(guarding.build_guards(guards, self._editor, self.spec))
        fingerprints = {}
        for layer in self._editor.layers:  # before any weight can move
            name = self.spec.mlp_out_weight_name(layer)
            fingerprints[name] = tensor_fingerprint(model.get_parameter(name))
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "seqedit_version": __version__,
            "created": _now(), "session_id": uuid.uuid4().hex, "method": self.method,
            "config": config_dict(self._editor.config), "config_hash": self.config_hash,
            "seed": seed, "max_delta_ratio": self._max_delta_ratio,
            "guards": guarding.manifest_entry(self._guards),
            "model": model_identity(model, self.spec), "base_fingerprint": fingerprints,
            "model_fingerprint": model_fingerprint(model),
        }
        if ledger_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="seqedit-session-")
            ledger_dir = self._tmp.name
        self._claim_model()
        try:
            self._ledger = Ledger.create(ledger_dir, manifest)
            self._start_evaluations(evaluators, eval_every)
        except BaseException:
            self.close()
            raise

    def _setup(self, model, tokenizer, method, spec, stats, stats_options, seed, config) -> None:
        from ..models import spec as model_spec

        self.model, self.tokenizer = model, tokenizer
        self._w0_norms: dict[str, float] = {}
        self.spec = spec if spec is not None else model_spec(model)
        if isinstance(method, str):
            from ..editors import create

            self._editor = create(method, self.spec, **config)
        elif config:
            raise TypeError(f"editor options {sorted(config)} apply only when `method` is a "
                            "name; configure the Editor instance itself")
        else:
            check_editor(method, self.spec)
            self._editor = method
        self.method = self._editor.name
        self.config_hash = config_hash(self.method, self._editor.config, __version__)
        self._moments = SecondMoments(model, tokenizer, stats, options=stats_options,
                                      layers_hint=self._editor.layers)
        self._ctx = EditContext(tokenizer, self.spec, self._moments, seed)
        self._base = BaseWeights(model)
        self._accumulated = AccumulatedDelta()
        self._guards: list = []

    def _start_guards(self, guards: list) -> None:
        """Guards read W₀: its copies are taken now, while the model is the base model."""
        self._guards = guards
        self._gctx = guarding.context(self.model, self.spec, self._editor, self._ctx,
                                      self._accumulated, self._base)
        if guards:
            self._base.snapshot(self.spec.mlp_out_weight_name(layer)
                                for layer in self._editor.layers)

    def _start_evaluations(self, evaluators: list, every: int | None) -> None:
        """Prepare the evaluators while the model is still the base model."""
        self._evals = Evaluations(evaluators, every, model=self.model, tokenizer=self.tokenizer,
                                  spec=self.spec, seed=self._ctx.seed, ledger=self._ledger,
                                  base=self._base, live_requests=self._live_requests)
        if evaluators:
            self._evals.prepare([self.spec.mlp_out_weight_name(layer)
                                 for layer in self._editor.layers])

    # -- reopening ---------------------------------------------------------------------------
    @classmethod
    def resume(cls, directory: str | Path, model: torch.nn.Module, tokenizer: Any, *,
               method: Any = None, spec: Any = None, stats: Any = None,
               stats_options: dict | None = None, progress: bool = True,
               evaluators: Any = None, eval_every: int | None = None,
               guards: Any = None) -> "EditSession":
        """Reopen a session directory (after a crash, or a `save`) on a freshly loaded *base*
        model: repair what a crash left, check the model is the recorded base, prepare the
        evaluators on it, replay every live edit in ledger order (weights, then
        `editor.commit`). Further edits append to `directory`; evaluations the ledger holds are
        not repeated.

        method: None recreates the editor from the manifest via the registry; pass the Editor
        instance for editors outside it (its name and config must match the manifest's).
        guards: None rebuilds the recorded guards; given ones must be the recorded ones.
        """
        evaluators = check_evaluators(evaluators, eval_every)
        ledger = Ledger.open(directory)
        self = cls.__new__(cls)
        self._tmp = self._ledger = None
        try:
            manifest = ledger.manifest
            if method is None or (isinstance(method, str) and method == manifest["method"]):
                from ..editors import EDITORS
                from ..models import spec as model_spec

                if manifest["method"] not in EDITORS:
                    raise LedgerError(f"{directory} was written by editor {manifest['method']!r}, "
                                      "which is not in seqedit.editors.EDITORS; register it "
                                      "(seqedit.editors.register_editor) or pass the Editor as "
                                      "`method=`")
                spec = spec if spec is not None else model_spec(model)
                editor_cls, config_cls = EDITORS[manifest["method"]]
                method = editor_cls(config_cls.from_dict(manifest["config"], spec))
            self._setup(model, tokenizer, method, spec, stats, stats_options, manifest["seed"], {})
            self._max_delta_ratio = float(manifest.get("max_delta_ratio", MAX_DELTA_RATIO))
            check_same_editor(directory, manifest, self.method, self._editor.config)
            check_config_hashes(ledger, self.method, self._editor.config)
            check_base_model(model, self.spec, manifest, ledger.fingerprints)
            self._start_guards(guarding.rebuild(manifest.get("guards", []), guards,
                                                self._editor, self.spec, directory))
            self._claim_model()
            self._ledger = ledger
            for name in ledger.fingerprints:  # the base weights, before replay moves them
                self._w0_norm(name)
            self._start_evaluations(evaluators, eval_every)
            restore_memo(self._ctx.memo, ledger.memo)
            replay(ledger, self._editor, self._guards, self._moments, self._apply,
                   progress=progress)
            return self
        except BaseException:
            ledger.close()
            self.close()
            raise

    load = resume  # same operation: a saved directory is a ledger like any other

    # -- editing -----------------------------------------------------------------------------
    def pending(self, requests: Any) -> list[EditRequest]:
        """The requests the ledger has not processed yet (count-matched, so a request given
        twice runs twice). Refused and rolled-back requests count as processed."""
        requests = as_requests(requests)
        return [requests[i] for i in split_done(requests, self._ledger)[0]]

    def edit(self, requests: Any, *, batch_size: int = 1, progress: bool = True,
             strict: bool = False, skip_done: bool = True, probe: bool = True) -> list[EditResult]:
        """Edit sequentially, `batch_size` requests per step; one EditResult per request.

        All requests are validated first: one bad request raises RequestValidationError and no
        weight moves. Requests the ledger already processed are skipped (status "skipped") unless
        `skip_done=False`, so re-running a script after a crash edits only what is missing. A
        delta the session refuses is recorded and the run goes on; `strict=True` raises
        EditRefused instead (after recording it). `probe=False` skips the P(target) passes.
        """
        self._ledger.ensure_writable()
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        requests = as_requests(requests)
        validate_requests(requests, self.tokenizer, self.spec, self._ledger)
        for guard in self._guards:
            guard.plan(requests)
        todo, done = (split_done(requests, self._ledger) if skip_done
                      else (list(range(len(requests))), {}))
        results: list[EditResult | None] = [None] * len(requests)
        for i, edit_id in done.items():
            results[i] = EditResult(edit_id, requests[i].case_id, SKIPPED, request=requests[i])
        if done:
            log.info("skipping %d request(s) the ledger already has", len(done))
        self._run_scheduled(force=False)  # step 0, or one a killed run owed
        with Progress(len(todo), self._progress_label(), "edit", enabled=progress) as bar:
            for start in range(0, len(todo), batch_size):
                index = todo[start:start + batch_size]
                for i, result in zip(index, self._step([requests[i] for i in index], strict, probe)):
                    results[i] = result
                bar.update(len(index))
                self._run_scheduled(force=False)
        self._run_scheduled(force=True)  # "at the end"
        return results  # type: ignore[return-value]

    def _progress_label(self) -> str:
        return "+".join([self.method, *(g.name for g in self._guards)])

    # -- one step, stage by stage --------------------------------------------------------------
    def _step(self, batch: list[EditRequest], strict: bool, probe: bool) -> list[EditResult]:
        edit_id = self._ledger.next_edit_id
        clock = _Clock()
        pre = self._probe(batch, probe)
        clock.lap("probe_pre_s")
        self._gctx.step = edit_id
        solving = guarding.solver(self._guards)
        try:
            delta = (solving.solve(batch, self._gctx) if solving is not None
                     else self._editor.compute(self.model, batch, self._ctx))
        except SolveError as err:
            delta, reason = None, f"the editor could not solve this edit: {err.reason}"
        clock.lap("compute_s")
        if delta is not None and self._guards:
            check_structure(self.model, self.method, delta)  # the editor's, before guards use it
            try:
                for guard in self._guards:
                    delta = guard.guard(delta, batch, self._gctx)
            except SolveError as err:
                delta, reason = None, f"a guard could not solve this edit: {err.reason}"
            clock.lap("guards_s")
        if delta is not None:
            check_structure(self.model, self.method, delta)
            reason = refusal(delta, self.model, self._w0_norm,
                             max_delta_ratio=self._max_delta_ratio)
        record = {
            "type": "edit", "edit_id": edit_id, "time": _now(), "method": self.method,
            "config_hash": self.config_hash, "seqedit_version": __version__,
            "requests": [r.to_dict() for r in batch],
            "request_keys": [request_key(r) for r in batch],
            "stats_layers": sorted(self._moments.computed - self._ledger.stats_layers),
            "info": jsonable(delta.info) if delta is not None else {},
            "memo": portable_memo(self._ctx.memo, self._ledger.memo),
        }
        if reason is not None:
            return self._refuse(edit_id, batch, record, reason, pre, clock, strict)
        return self._commit(edit_id, batch, delta, record, pre, clock, probe)

    def _probe(self, batch: list[EditRequest], probe: bool) -> list:
        if not probe:
            return [None] * len(batch)
        return request_probabilities(self.model, self.tokenizer, batch)

    def _refuse(self, edit_id, batch, record, reason, pre, clock, strict) -> list[EditResult]:
        times = clock.total()
        record.update(status=REFUSED, reason=reason, delta=None, layer_stats={},
                      base_fingerprint={}, timings=times,
                      probabilities=[{"case_id": r.case_id, "pre": p, "post": None}
                                     for r, p in zip(batch, pre)])
        self._ledger.append(record)
        log.warning("edit %d refused: %s (weights untouched)", edit_id, reason)
        results = [EditResult(edit_id, r.case_id, REFUSED, False, p, None, dict(times),
                              reason, r) for r, p in zip(batch, pre)]
        if strict:
            raise EditRefused(edit_id, reason, results)
        return results

    def _commit(self, edit_id, batch, delta, record, pre, clock, probe) -> list[EditResult]:
        fresh = {d.name: tensor_fingerprint(self.model.get_parameter(d.name))
                 for d in delta.layers if d.name not in self._ledger.fingerprints}
        if self._evals.evaluators:
            self._base.snapshot(d.name for d in delta.layers)
        record["delta"] = self._ledger.write_delta(edit_id, delta)
        clock.lap("write_s")
        self._crash_point("delta_written")
        applied = committed = False
        try:
            record["layer_stats"] = self._apply(delta, 1.0)
            applied = True
            clock.lap("apply_s")
            self._crash_point("applied")
            self._editor.commit(delta)
            committed = True
            clock.lap("commit_s")
            post = self._probe(batch, probe)
            clock.lap("probe_post_s")
            live = len(self._ledger.live_entries()) + 1
            with self._measured():
                evaluations = self._evals.after_edit(batch, edit_id + 1, live)
            clock.lap("after_each_s")
            times = clock.total()
            ok = [success(r, p) if p else None for r, p in zip(batch, post)]
            record.update(status=APPLIED, reason=None, base_fingerprint=fresh, timings=times,
                          probabilities=[{"case_id": r.case_id, "pre": a, "post": b, "success": s}
                                         for r, a, b, s in zip(batch, pre, post, ok)])
            if evaluations:
                record["evaluations"] = evaluations
            self._ledger.append(record)
        except BaseException:
            # Not committed: make memory match the ledger again before the error goes up.
            if committed:
                self._editor.revert(delta)
            if applied:
                self._apply(delta, -1.0)
            raise
        # Guard state follows the commit point (pure arithmetic on what the line names), so no
        # failure path has to invert it; replay does the same.
        for guard in self._guards:
            guard.commit(delta)
        clock.lap("ledger_s")
        self._crash_point("committed")
        log.debug("edit %d applied (%d request(s), %.3fs)", edit_id, len(batch), times["total_s"])
        after = {name: EvalResult.from_dict(r) for name, r in evaluations.items()}
        stopping = stop_requested(list(after.values()))
        if stopping:
            raise EvaluationStop(stopping)
        return [EditResult(edit_id, r.case_id, APPLIED, s, a, b, dict(times), None, r, after)
                for r, a, b, s in zip(batch, pre, post, ok)]

    # -- evaluation ----------------------------------------------------------------------------
    def _run_scheduled(self, *, force: bool) -> list[EvalResult]:
        step = self._ledger.next_edit_id
        if not self._evals.evaluators or not (force or self._evals.due(step)):
            return []
        with self._measured():
            results = self._evals.run(step, len(self._ledger.live_entries()))
        stopping = stop_requested(results)
        if stopping:
            raise EvaluationStop(stopping)
        return results

    def evaluate(self) -> list[EvalResult]:
        """Run every evaluator on the model as it is now (after-all schedule), one result per
        evaluator in the order given; a result the ledger already holds for this step is
        returned, not recomputed."""
        self._ledger.ensure_writable()
        with self._measured():
            return self._evals.run(self._ledger.next_edit_id, len(self._ledger.live_entries()))

    def _measured(self):
        """The model as evaluators see it: under the guards' views (PRUNE post-hoc), computed
        only when there is an evaluator to look."""
        if not self._evals.evaluators:
            return contextlib.nullcontext()
        return guarding.viewed(self.model, self._guards, self._gctx)

    @property
    def evaluations(self) -> list[EvalResult]:
        """Every after-all result of this session's directory, in ledger order: one per
        (step, evaluator). After-each results are in each EditResult's `evaluations`."""
        return self._evals.results()

    def _live_requests(self) -> list[EditRequest]:
        run = read_run(self._ledger.root)
        live = set(run.live_edit_ids)
        return [EditRequest.from_dict(r) for rec in run.edits if rec["edit_id"] in live
                for r in rec["requests"]]

    def _w0_norm(self, name: str) -> float:
        """‖W₀‖_F of an edited weight: read the first time the session sees it, while it is
        still the base weight (a fresh session's first edit of it, or a resume before replay)."""
        if name not in self._w0_norms:
            weight = self.model.get_parameter(name).detach()
            self._w0_norms[name] = float(torch.linalg.vector_norm(weight, dtype=torch.float64))
        return self._w0_norms[name]

    def _claim_model(self) -> None:
        """One live session per model object: a second one's ledger would not reproduce it."""
        owner = getattr(self.model, "_seqedit_session", None)
        other = owner() if owner is not None else None
        if other is not None and other is not self and not other.closed:
            raise RuntimeError(f"this model object is already being edited by {other!r}; close "
                               "that session first (or load another copy of the model)")
        self.model._seqedit_session = weakref.ref(self)

    @property
    def closed(self) -> bool:
        return self._ledger is None or self._ledger.closed

    def _crash_point(self, where: str) -> None:
        """Does nothing; tests replace it to kill the process at a named point of a step."""

    def _apply(self, delta: Delta, alpha: float) -> dict[str, dict[str, float]]:
        self._moments.base_intact = False  # from here on, new statistics would be wrong
        stats = apply_delta(self.model, delta, alpha)
        self._accumulated.add(delta, alpha)
        return stats

    # -- undoing, saving, exporting ---------------------------------------------------------
    def rollback(self, edit_id: int) -> None:
        """Remove an applied edit exactly (W −= U Vᵀ, then editor.revert); the ledger gets a
        rollback line. Unknown, refused or already rolled-back ids raise RollbackError."""
        self._ledger.ensure_writable()
        ok_id = isinstance(edit_id, numbers.Integral) and not isinstance(edit_id, bool)
        entry = self._ledger.entries.get(int(edit_id)) if ok_id else None
        if entry is None:
            known = self._ledger.next_edit_id
            raise RollbackError(f"no edit {edit_id!r} in this session ("
                                + (f"its edit ids are 0..{known - 1})" if known else "no edits yet)"))
        if entry.status != APPLIED:
            raise RollbackError(f"edit {edit_id} was refused: it never changed the model")
        if entry.rolled_back:
            raise RollbackError(f"edit {edit_id} is already rolled back")
        delta = self._ledger.load_delta(entry)
        start = time.perf_counter()
        undo = guarding.undo(self._guards, delta, self._gctx)
        line = {"type": "rollback", "edit_id": entry.edit_id, "time": _now(),
                "seqedit_version": __version__}
        if undo is not None:
            line["delta"] = self._ledger.write_delta(entry.edit_id, undo, rollback=True)
        undone = reverted = False
        try:
            stats = self._apply(delta, -1.0) if undo is None else self._apply(undo, 1.0)
            undone = True
            self._crash_point("unapplied")
            self._editor.revert(delta)
            reverted = True
            self._ledger.append({**line, "layer_stats": stats,
                                 "timings": {"total_s": time.perf_counter() - start}})
        except BaseException:
            if reverted:
                self._editor.commit(delta)
            if undone:
                self._apply(delta, 1.0) if undo is None else self._apply(undo, -1.0)
            raise
        for guard in reversed(self._guards):
            guard.revert(delta, undo)
        log.info("edit %d rolled back", entry.edit_id)

    @property
    def directory(self) -> Path:
        return self._ledger.root

    @property
    def live_edits(self) -> list[int]:
        """Ids of the edits currently in the model, in the order they were applied."""
        return [e.edit_id for e in self._ledger.live_entries()]

    def records(self) -> Iterator[dict[str, Any]]:
        """The ledger's lines as dicts, oldest first (read from disk)."""
        yield from read_run(self._ledger.root).records

    def save(self, directory: str | Path) -> Path:
        """Copy the session (manifest, ledger, deltas) to `directory`, which `EditSession.load`
        reopens on the base model. Saving into the session's own directory is a no-op: every
        committed step is already durable there."""
        dest = Path(directory)
        if dest.exists() and dest.resolve() == self._ledger.root.resolve():
            return dest
        manifest = {**self._ledger.manifest, "base_fingerprint": dict(self._ledger.fingerprints),
                    "saved": _now()}
        self._ledger.copy_to(dest, manifest)
        return dest

    def export_peft(self, directory: str | Path, rank: int | None = None) -> dict[str, Any]:
        """Write the live edits' accumulated ΔW as a PEFT LoRA adapter; returns the report
        (also in `seqedit_export.json`), with the relative Frobenius error of any truncation."""
        edits: dict[str, int] = {}
        for entry in self._ledger.live_entries():
            for layer in entry.delta["layers"]:
                edits[layer["name"]] = edits.get(layer["name"], 0) + 1
        factors = {}
        for name in edits:  # a weight whose edits were all rolled back has nothing to export
            u, v = self._accumulated.factors(name)
            factors[name] = ([u], [v], edits[name])
        return peft_export.write_adapter(directory, self.model, factors, rank=rank)

    def close(self) -> None:
        """Release the directory lock and the model (and remove a temporary directory)."""
        if self._ledger is not None:
            self._ledger.close()
        model = getattr(self, "model", None)
        owner = getattr(model, "_seqedit_session", None)
        if owner is not None and owner() is self:
            del model._seqedit_session
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "EditSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"EditSession(method={self.method!r}, live_edits={len(self.live_edits)}, "
                f"steps={self._ledger.next_edit_id}, directory={str(self.directory)!r})")
