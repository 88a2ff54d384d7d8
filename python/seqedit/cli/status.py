"""What a run has done so far, read from its ledger without opening the session (safe next to
the process writing it)."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .._progress import duration
from ..report import session_dir
from .run import saved_config


def summary(run_dir: str | Path) -> dict[str, Any]:
    from ..session.reader import read_run

    run_dir = Path(run_dir)
    run = read_run(session_dir(run_dir))
    cfg = saved_config(run_dir) or {}
    edits = run.edits
    applied = [r for r in edits if r.get("status") == "applied"]
    requests = sum(len(r.get("requests") or ()) for r in edits)
    probs = [p for r in edits for p in r.get("probabilities") or []]
    per_request = [r["timings"]["total_s"] / max(1, len(r["requests"])) for r in applied
                   if r.get("timings")]
    timed = [r for r in applied if r.get("timings")]
    timed_requests = sum(len(r["requests"]) for r in timed)
    target = (cfg.get("data") or {}).get("edits")
    out = {
        "run": str(run_dir), "method": run.manifest.get("method"),
        "guards": [g.get("name") for g in run.manifest.get("guards") or []],
        "requests_done": requests, "target": target, "steps": len(edits),
        "applied_steps": len(applied), "refused_steps": len(edits) - len(applied),
        "rolled_back": len(run.rolled_back), "live_edits": len(run.live_edit_ids),
        "successful_after_each": sum(bool(p.get("success")) for p in probs),
        "scored": len(probs),
        "median_s_per_edit": statistics.median(per_request) if per_request else None,
        # The mean is what predicts the rest: a guard may spend one long step per batch of
        # requests (D4S optimises its targets ahead) and little on the others.
        "mean_s_per_edit": (sum(r["timings"]["total_s"] for r in timed) / timed_requests
                            if timed_requests else None),
        "evaluations": len(run.evaluations),
        "last_evaluation_step": run.evaluations[-1]["step"] if run.evaluations else None,
        "last_line": run.records[-1].get("time") if run.records else None,
    }
    if target and out["mean_s_per_edit"] and requests < target:
        out["eta_s"] = (target - requests) * out["mean_s_per_edit"]
    return out


def render(info: dict[str, Any]) -> str:
    guards = "+".join(info["guards"])
    method = info["method"] + (f" + {guards}" if guards else "")
    target = f"/{info['target']}" if info["target"] else ""
    lines = [f"{info['run']}: {method}",
             f"  edits       {info['requests_done']}{target} requests in {info['steps']} step(s): "
             f"{info['applied_steps']} applied, {info['refused_steps']} refused, "
             f"{info['rolled_back']} rolled back; {info['live_edits']} live"]
    if info["scored"]:
        lines.append(f"  efficacy    {info['successful_after_each']}/{info['scored']} right after "
                     "each edit (P(new) > P(true) on the rewrite prompt)")
    if info["mean_s_per_edit"] is not None:
        eta = f", ETA {duration(info['eta_s'])}" if "eta_s" in info else ""
        lines.append(f"  speed       {info['mean_s_per_edit']:.2f} s per edit (mean; median "
                     f"{info['median_s_per_edit']:.2f}; whole steps incl. probes){eta}")
    lines.append(f"  evaluations {info['evaluations']} recorded"
                 + (f", last at step {info['last_evaluation_step']}"
                    if info["last_evaluation_step"] is not None else ""))
    if info["last_line"]:
        lines.append(f"  last write  {info['last_line']}")
    return "\n".join(lines)
