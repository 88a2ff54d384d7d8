"""`seqedit demo`: 100 sequential MEMIT edits of the packaged SmolLM2-135M without a guard and
with D4S, measured as they go, then one report comparing the two.

Both runs are ordinary `seqedit run` directories under --out, so the demo can be stopped and
run again (it continues), and `seqedit status/report/export` work on them. With two cores they
run at once, each a `seqedit run` child process on one thread (its log beside its directory),
and the demo prints their combined progress from the ledgers. To fit about 15 minutes on two
CPU cores the value optimisation stops once the new target leads every other token by 1 nat
(`early_stop_on_argmax`, as ENCORE does); weight health is measured after every edit, the
editing metrics (without fluency) and the quick general-ability probe (50 documents per task,
2 WikiText-2 articles) before and after. `--quick` makes 4 edits per run (the CI end-to-end
test).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .._progress import duration
from . import config as configs
from .run import execute

log = logging.getLogger("seqedit.cli")
RUNS = (("memit", []), ("memit+d4s", ["d4s"]))


def demo_configs(out: Path, quick: bool, edits: int | None = None) -> list[dict[str, Any]]:
    n = edits or (4 if quick else 100)
    evaluators: dict[str, Any] = {
        "editing": {"after_each": False, "fluency_prompts": 0},
        "health": {}}
    if importlib.util.find_spec("lm_eval") is not None:
        evaluators["general"] = {"limit": 10 if quick else 50,
                                 "task_limits": {"wikitext": 1 if quick else 2}}
    else:
        log.warning("lm-eval is not installed: the demo skips the general-ability probe "
                    "(pip install 'seqedit[eval]')")
    out_cfgs = []
    for name, guards in RUNS:
        data = {"output": str(out / name), "name": name, "method": "memit",
                "method_options": {"early_stop_on_argmax": True, "argmax_margin": 1.0},
                "guards": guards, "data": {"source": "counterfact", "edits": n},
                "evaluators": evaluators, "eval_every": None}
        out_cfgs.append(configs.resolve(data, f"demo ({name})"))
    return out_cfgs


def _last_checkpoints(cfgs: list[dict[str, Any]]) -> str:
    """The report's summary table at each run's last checkpoint, one row per column."""
    from ..report import summarise
    from ..report.tables import table

    runs = [summarise(c["output"], c["name"]) for c in cfgs]
    headers, rows, _ = table([{**r, "checkpoints": r["checkpoints"][-1:]} for r in runs if r["checkpoints"]])
    lines = [f"  {'':<28}" + "".join(f"{row[0]:>14}" for row in rows)]
    lines += [f"  {h:<28}" + "".join(f"{row[j]:>14}" for row in rows) for j, h in enumerate(headers) if j]
    return "\n".join(lines)


def _launch(cfg: dict[str, Any], threads: int) -> tuple[subprocess.Popen, Path]:
    """`seqedit run` on `cfg` in a child process, its config and log beside its directory."""
    out = Path(cfg["output"])
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(configs.dump({**cfg, "threads": threads}), encoding="utf-8")
    log_path = out.parent / f"{out.name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SEQEDIT_PROGRESS": "lines"}
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "seqedit", "run", str(path)], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    return proc, log_path


def _progress_line(cfgs: list[dict[str, Any]], started: float) -> str:
    from .status import summary

    parts, left = [], 0.0
    for cfg in cfgs:
        try:
            info = summary(cfg["output"])
        except Exception:  # noqa: BLE001 - not started yet (no manifest): say so, keep polling
            parts.append(f"{cfg['name']} starting")
            continue
        done, target = info["requests_done"], cfg["data"]["edits"]
        speed = info["mean_s_per_edit"]
        parts.append(f"{cfg['name']} {done}/{target}" + (f" ({speed:.1f} s/edit)" if speed else ""))
        left = max(left, info.get("eta_s", 0.0))
    eta = f", editing ETA {duration(left)}" if left else ""
    return f"  {duration(time.perf_counter() - started)}: " + " · ".join(parts) + eta


def _run_parallel(cfgs: list[dict[str, Any]], every_s: float) -> None:
    """One child per run, one thread each: on a small model two single-thread processes use two
    cores far better than one process with two threads."""
    started = time.perf_counter()
    children = [(cfg, *_launch(cfg, threads=1)) for cfg in cfgs]
    print("  logs: " + ", ".join(str(log) for _, _, log in children), flush=True)
    next_line = every_s
    try:
        while any(proc.poll() is None for _, proc, _ in children):
            time.sleep(1.0)
            if time.perf_counter() - started >= next_line:
                print(_progress_line(cfgs, started), flush=True)
                next_line += every_s
    except KeyboardInterrupt:
        for _, proc, _ in children:
            proc.wait()
        raise
    failed = [(cfg, proc, log) for cfg, proc, log in children if proc.returncode != 0]
    for cfg, proc, log in failed:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        print(f"{cfg['name']} failed (exit {proc.returncode}); the end of {log}:\n  "
              + "\n  ".join(tail), file=sys.stderr)
    if failed:
        raise RuntimeError(f"{len(failed)} demo run(s) failed; run the demo again to continue")
    print(_progress_line(cfgs, started), flush=True)


def run_demo(args) -> int:
    from .. import report

    out = Path(args.out or ("seqedit-demo-quick" if args.quick else "seqedit-demo")).resolve()
    started = time.perf_counter()
    cfgs = demo_configs(out, args.quick, args.edits)
    jobs = max(1, min(len(cfgs), args.jobs or os.cpu_count() or 1))
    n = cfgs[0]["data"]["edits"]
    every = f"every {cfgs[0]['eval_every']} edits" if cfgs[0]["eval_every"] else "before and after"
    print(f"seqedit demo: {n} sequential CounterFact edits (one per step) on the packaged "
          f"SmolLM2-135M with {' and '.join(c['name'] for c in cfgs)}, evaluated {every}; "
          f"{'in parallel, one core each' if jobs > 1 else 'one after the other'}; into {out}",
          flush=True)
    if jobs > 1:
        _run_parallel(cfgs, every_s=args.every)
    else:
        for cfg in cfgs:
            done = execute(cfg, f"demo ({cfg['name']})")
            print(f"{cfg['name']}: {done['live_edits']} live edits ({done['seconds']:.0f} s)",
                  flush=True)
    paths = report.write([Path(c["output"]) for c in cfgs], out / "report",
                         title=f"seqedit demo: MEMIT with and without D4S (SmolLM2-135M, "
                               f"{n} CounterFact edits, one per step)",
                         labels=[c["name"] for c in cfgs])
    print(f"\nAfter {n} edits (last checkpoint; how each number was measured: the report):")
    print(_last_checkpoints(cfgs))
    print(f"\nReport: {paths['html']}\n(plots beside it; `seqedit status {out}/memit`; done in "
          f"{duration(time.perf_counter() - started)})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="MEMIT with and without D4S on the packaged model, compared",
                       description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 edits per run (end-to-end check)")
    p.add_argument("--out", help="demo directory (default ./seqedit-demo, or "
                                 "./seqedit-demo-quick with --quick)")
    p.add_argument("--edits", type=int, help="edits per run (default 100; 4 with --quick)")
    p.add_argument("--jobs", type=int, help="runs at once, one core each (default: the cores)")
    p.add_argument("--every", type=float, default=30.0, help="seconds between progress lines")
    p.set_defaults(handler=run_demo)
