"""`seqedit run`: one run directory per config, started or continued.

Layout of a run directory: `run.yaml` (the resolved config, written before the first edit),
`session/` (the EditSession's manifest, ledger and deltas — the record of what happened),
`report/` (written by `seqedit report`). Running the same config again reopens `session/` on a
freshly loaded base model and edits only what the ledger lacks, so a killed run loses and
repeats nothing; a config that would change what an edit is, is refused.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .._atomic import write_durable
from .config import RESUMABLE_CHANGES, ConfigError, changed_keys, dump

RUN_CONFIG = "run.yaml"
SESSION = "session"
log = logging.getLogger("seqedit.cli")


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    import yaml

    path = run_dir / RUN_CONFIG
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None


def _claim(cfg: dict[str, Any], source: str) -> Path:
    """Check that the output directory is this run's, or empty; record the config there."""
    out = Path(cfg["output"])
    old = saved_config(out)
    if old is not None:
        changed = [k for k in changed_keys(old, cfg) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(source, [
                f"{key}: this run directory ({out}) was started with a different value; a run "
                f"directory holds one run — use another `output` or restore the value"
                for key in changed])
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(source, [f"output: {out} exists and does not hold a seqedit run "
                                   f"(no {RUN_CONFIG}); choose an empty or new directory"])
    out.mkdir(parents=True, exist_ok=True)
    write_durable(out / RUN_CONFIG, dump(cfg).encode())
    return out


def build_evaluators(cfg: dict[str, Any]) -> list:
    from .. import metrics

    return [metrics.create(name, **(options or {})) for name, options in cfg["evaluators"].items()]


def stats_options(cfg: dict[str, Any]) -> dict[str, Any]:
    options = {"max_tokens": cfg["stats"]["max_tokens"]}
    if cfg["stats"]["corpus"] is not None:
        options["corpus"] = cfg["stats"]["corpus"]
    return options


def load_model(cfg: dict[str, Any]):
    import torch

    from .. import models

    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    start = time.perf_counter()
    log.info("loading model %s (%s)", cfg["model"], cfg["dtype"])
    model, tok = models.load(cfg["model"], dtype=getattr(torch, cfg["dtype"]))
    log.info("model loaded in %.1f s (CPU threads %d)", time.perf_counter() - start,
             torch.get_num_threads())
    return model, tok


def requests_of(cfg: dict[str, Any]) -> list:
    from .. import data

    d = cfg["data"]
    requests = data.load(d["source"], split=d["split"], limit=d["start"] + d["edits"])
    requests = requests[d["start"]:]
    if len(requests) < d["edits"]:
        log.warning("%s has only %d records from index %d; editing those", d["source"],
                    len(requests), d["start"])
    return requests


def open_session(cfg: dict[str, Any], out: Path, model, tok):
    from ..session import EditSession

    directory = out / SESSION
    every = cfg["eval_every"] // cfg["batch_size"] if cfg["eval_every"] else None
    evaluators = build_evaluators(cfg)
    if (directory / "manifest.json").exists():
        log.info("resuming %s", directory)
        return EditSession.resume(directory, model, tok, stats_options=stats_options(cfg),
                                  evaluators=evaluators, eval_every=every)
    try:
        return EditSession(model, tok, cfg["method"], ledger_dir=directory, seed=cfg["seed"],
                           evaluators=evaluators, eval_every=every, guards=cfg["guards"],
                           stats_options=stats_options(cfg),
                           max_delta_ratio=cfg["max_delta_ratio"], **cfg["method_options"])
    except (TypeError, ValueError) as err:  # options whose values only the model can check
        raise ConfigError(str(out / RUN_CONFIG), [str(err)]) from err


def execute(cfg: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Start or continue the run `cfg` describes; returns a summary of this call."""
    out = _claim(cfg, source)
    model, tok = load_model(cfg)
    requests = requests_of(cfg)
    start = time.perf_counter()
    with open_session(cfg, out, model, tok) as session:
        todo = len(session.pending(requests))
        log.info("%d of %d edits already in the ledger, %d to go", len(requests) - todo,
                 len(requests), todo)
        results = session.edit(requests, batch_size=cfg["batch_size"], progress=True)
        live = len(session.live_edits)
    new = [r for r in results if r.status != "skipped"]
    elapsed = time.perf_counter() - start
    return {"output": str(out), "requests": len(requests), "edited_now": len(new),
            "applied_now": sum(r.applied for r in new),
            "successful_now": sum(bool(r.success) for r in new), "live_edits": live,
            "seconds": elapsed}
