"""One run's measurements as series against the number of live edits, read from its directory.

Everything returned is plain JSON (dicts, lists, strings, finite numbers), so a report can be
rebuilt from report.json and the CLI can print it. Reading goes through `read_run`, which takes
no lock: a run that is still being written is read up to its last committed line.

x is the number of edit requests live in the model at that point (applied, not rolled back): a
run of 100 steps of 10 requests ends at x = 1000, as papers count edits. The ledger's own
`live_edits` (live edit steps) is kept beside it.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from ..session.ledger import MANIFEST, LedgerError
from ..session.reader import read_run

# What "seconds per edit" counts: the edit itself, not the probes or evaluations around it.
EDIT_STAGES = ("compute_s", "guards_s", "write_s", "apply_s", "commit_s")
# The protocol fields that tell two curves of one metric apart, in the order a key shows them.
KEY_FIELDS = ("family", "schedule", "task", "weight")
MANIFEST_FIELDS = ("method", "guards", "model", "seed", "created", "session_id",
                   "seqedit_version", "config_hash", "config")


class ReportError(ValueError):
    """A directory that cannot be reported on; the message names it."""


def session_dir(directory: str | os.PathLike) -> Path:
    """The session directory of `directory`: itself, or its `session/` subfolder (a CLI run)."""
    root = Path(directory)
    if not root.is_dir():
        raise ReportError(f"{root}: no such directory")
    for candidate in (root / "session", root):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise ReportError(f"{root}: not a seqedit session directory (no {MANIFEST} in it "
                      f"or in {root / 'session'})")


def series_key(evaluator: str, name: str, protocol: dict[str, Any]) -> str:
    """evaluator/name[/family][/schedule][/task][/L<layer>], e.g. editing/efficacy/binary/after-all
    or health/l1_ratio/after-each/L4: one curve of one run."""
    parts = [evaluator, name]
    for field in KEY_FIELDS:
        value = protocol.get(field)
        if value is None or value == evaluator:
            continue
        layer = re.search(r"\.(\d+)\.", str(value)) if field == "weight" else None
        parts.append(f"L{layer.group(1)}" if layer else str(value))
    return "/".join(parts)


def _number(value: Any) -> float | None:
    # bool is an int to Python but never a curve; NaN and inf are not JSON.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class _Collector:
    """Appends points to the run's series, one series per key, in first-seen order."""

    def __init__(self):
        self.series: dict[str, dict[str, Any]] = {}

    def add(self, key: str, meta: dict[str, Any], where: dict[str, int], value: float,
            n: Any = None, stderr: Any = None) -> None:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = {"key": key, **meta, "x": [], "live_edits": [], "step": [],
                                    "state": [], "value": [], "n": [], "stderr": []}
        for field in ("x", "live_edits", "step", "state"):
            s[field].append(where[field])
        s["value"].append(value)
        s["n"].append(n)
        s["stderr"].append(_number(stderr))

    def result(self, result: dict[str, Any], where: dict[str, int]) -> None:
        """Every numeric metric of one EvalResult (an eval line's, or an edit line's after-each)."""
        evaluator, info = result.get("evaluator", "?"), result.get("info") or {}
        seen: dict[str, int] = {}
        for metric in result.get("metrics") or []:
            value = _number(metric.get("value"))
            if value is None:
                continue
            protocol = dict(metric.get("protocol") or {})
            protocol.setdefault("schedule", result.get("schedule"))
            key = series_key(evaluator, metric["name"], protocol)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:  # an evaluator that repeats a protocol still gets every curve
                key = f"{key}#{seen[key]}"
            meta = {"evaluator": evaluator, "metric": metric["name"],
                    "schedule": protocol.get("schedule"), "protocol": protocol}
            task = info.get(protocol.get("task")) if protocol.get("task") else None
            if isinstance(task, dict) and task.get("primary") == protocol.get("metric"):
                meta.update(primary=True, chance=_number(task.get("chance")),
                            unedited=_number(task.get("unedited")))
            self.add(key, meta, where, value, metric.get("n"), metric.get("stderr"))


AFTER_EACH_EFFICACY = {
    "evaluator": "session", "metric": "efficacy_after_each", "schedule": "after-each",
    "protocol": {"family": "binary", "schedule": "after-each", "prompts": "edit",
                 "measure": "P(target_new) > P(target_true) on the rewrite prompt, right after "
                            "the edit; cumulative mean over every applied request"}}
SECONDS_PER_EDIT = {
    "evaluator": "session", "metric": "seconds_per_edit", "schedule": "after-each",
    "protocol": {"unit": "s per request", "stages": "+".join(s[:-2] for s in EDIT_STAGES),
                 "measure": "editing time of the step / requests in it (probes and "
                            "evaluations excluded)"}}


def summarise(directory: str | os.PathLike, label: str | None = None) -> dict[str, Any]:
    """The series, checkpoints and description of the run in `directory` (JSON-able).

    Keys: label, directory, session, manifest (method, guards, model, ...), edits (counts),
    evaluators ({name: config}), checkpoints (one per evaluated model state: x, step, state,
    efficacy_after_each and s_per_edit so far), series ([{key, evaluator, metric, schedule,
    protocol, x, live_edits, step, state, value, n, stderr}]).
    """
    root = session_dir(directory)
    try:
        run = read_run(root)
    except LedgerError as err:
        raise ReportError(f"{directory}: {err}") from err
    live: dict[int, int] = {}  # edit id → requests in it, for the edits in the model now
    counts = {"applied": 0, "refused": 0, "rolled_back": 0, "requests_applied": 0}
    state, successes, seconds = 0, [], 0.0
    collect, checkpoints, evaluators = _Collector(), {}, {}
    for rec in run.records:
        kind = rec.get("type")
        if kind in ("edit", "rollback"):
            state += 1  # the ledger's state: its count of edit and rollback lines
        if kind == "rollback":
            live.pop(rec.get("edit_id"), None)
            counts["rolled_back"] += 1
        elif kind == "edit" and rec.get("status") != "applied":
            counts["refused"] += 1
        elif kind == "edit":
            size = len(rec.get("requests") or [])
            live[rec["edit_id"]] = size
            counts["applied"] += 1
            counts["requests_applied"] += size
            where = {"x": sum(live.values()), "live_edits": len(live), "step": state,
                     "state": state}
            successes += [bool(p.get("success")) for p in rec.get("probabilities") or []]
            if successes:
                collect.add("session/efficacy_after_each", AFTER_EACH_EFFICACY, where,
                            sum(successes) / len(successes), len(successes))
            timings = rec.get("timings") or {}
            spent = sum(_number(timings.get(k)) or 0.0 for k in EDIT_STAGES)
            seconds += spent
            if timings and size:
                collect.add("session/seconds_per_edit", SECONDS_PER_EDIT, where, spent / size, size)
            for result in (rec.get("evaluations") or {}).values():
                collect.result(result, {**where, "step": result.get("step", state)})
        elif kind == "eval":
            where = {"x": sum(live.values()), "live_edits": rec.get("live_edits", len(live)),
                     "step": rec.get("step", state), "state": rec.get("state", state)}
            collect.result(rec.get("result") or {}, where)
            evaluators[rec.get("evaluator", "?")] = rec.get("config") or {}
            applied = counts["requests_applied"]
            checkpoints.setdefault(where["state"], {
                **where, "requests_applied": applied,
                "efficacy_after_each": sum(successes) / len(successes) if successes else None,
                "s_per_edit": seconds / applied if applied else None})
    counts.update(live=len(live), live_requests=sum(live.values()), lines=len(run.records))
    return {"label": label or default_label(directory), "directory": str(directory),
            "session": str(root),
            "manifest": {k: run.manifest[k] for k in MANIFEST_FIELDS if k in run.manifest},
            "edits": counts, "evaluators": evaluators,
            "checkpoints": list(checkpoints.values()), "series": list(collect.series.values())}


def default_label(directory: str | os.PathLike) -> str:
    """The run's directory name (the CLI run's, not its `session/` subfolder's)."""
    return Path(directory).resolve().name
