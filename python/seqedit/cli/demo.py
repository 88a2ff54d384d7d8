"""`seqedit demo`: 100 sequential MEMIT edits of the packaged SmolLM2-135M without a guard and
with D4S, measured as they go, then one report comparing the two.

Both runs are ordinary `seqedit run` directories under --out, so the demo can be stopped and
run again (it continues), and `seqedit status/report/export` work on them. To fit about 15
minutes on two CPU cores the value optimisation stops once the new target leads every other
token by 1 nat (`early_stop_on_argmax`, as ENCORE does), and the general-ability probe is the
quick one at 50 documents per task. `--quick` makes 4 edits per run (the CI end-to-end test).
"""
from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

from . import config as configs
from .run import execute, session_dir

log = logging.getLogger("seqedit.cli")
RUNS = (("memit", []), ("memit+d4s", ["d4s"]))


def demo_configs(out: Path, quick: bool, edits: int | None = None) -> list[dict[str, Any]]:
    n = edits or (4 if quick else 100)
    evaluators: dict[str, Any] = {
        "editing": {"after_each": False, "fluency_prompts": 0 if quick else 20},
        "health": {}}
    if importlib.util.find_spec("lm_eval") is not None:
        evaluators["general"] = {"limit": 10 if quick else 50}
    else:
        log.warning("lm-eval is not installed: the demo skips the general-ability probe "
                    "(pip install 'seqedit[eval]')")
    out_cfgs = []
    for name, guards in RUNS:
        data = {"output": str(out / name), "name": name, "method": "memit",
                "method_options": {"early_stop_on_argmax": True, "argmax_margin": 1.0},
                "guards": guards, "data": {"source": "counterfact", "edits": n},
                "evaluators": evaluators, "eval_every": None if quick else 50}
        out_cfgs.append(configs.resolve(data, f"demo ({name})"))
    return out_cfgs


def _last(run_dir: Path) -> dict[str, float]:
    """The headline numbers of a run's last checkpoint (max over the edited layers for health)."""
    from ..session.reader import read_run

    run = read_run(session_dir(run_dir))
    last: dict[str, dict] = {}
    for rec in run.evaluations:
        last[rec["evaluator"]] = rec["result"]
    probs = [p for r in run.edits for p in r.get("probabilities") or []]
    out: dict[str, float] = {}
    if probs:
        out["efficacy right after each edit"] = sum(bool(p.get("success")) for p in probs) / len(probs)
    wanted = {("editing", "efficacy"): "retention (binary, all live edits)",
              ("editing", "generalization"): "generalisation (binary)",
              ("editing", "specificity"): "specificity (binary)",
              ("general", "wikitext.word_perplexity"): "WikiText-2 word perplexity",
              ("general", "sst2.acc"): "SST-2 accuracy",
              ("health", "sigma_max_delta_ratio"): "σmax(ΔW)/σmax(W₀), max layer",
              ("health", "condition_ratio"): "κ(W)/κ(W₀), max layer"}
    for evaluator, result in last.items():
        for m in result["metrics"]:
            key = wanted.get((evaluator, m["name"]))
            p = m.get("protocol") or {}
            if key is None or not isinstance(m.get("value"), (int, float)):
                continue
            if evaluator == "editing" and p.get("family") != "binary":
                continue
            if evaluator == "health" and p.get("schedule") != "after-all":
                continue
            out[key] = max(out.get(key, m["value"]), m["value"])
    return out


def run_demo(args) -> int:
    from .. import report

    out = Path(args.out or ("seqedit-demo-quick" if args.quick else "seqedit-demo")).resolve()
    started = time.perf_counter()
    print(f"seqedit demo: {len(RUNS)} runs of sequential MEMIT edits on the packaged "
          f"SmolLM2-135M, into {out}", flush=True)
    cfgs = demo_configs(out, args.quick, args.edits)
    for i, cfg in enumerate(cfgs, 1):
        print(f"\n[{i}/{len(cfgs)}] {cfg['name']}: {cfg['data']['edits']} CounterFact edits, one "
              f"per step, evaluated before, every {cfg['eval_every'] or 'only at the end'} "
              f"edits and at the end", flush=True)
        done = execute(cfg, f"demo ({cfg['name']})")
        print(f"[{i}/{len(cfgs)}] {cfg['name']}: {done['live_edits']} live edits "
              f"({done['seconds']:.0f} s)", flush=True)
    runs = [Path(c["output"]) for c in cfgs]
    paths = report.write(runs, out / "report", title="seqedit demo: MEMIT with and without D4S "
                         "(SmolLM2-135M, CounterFact, one edit per step)",
                         labels=[c["name"] for c in cfgs])
    rows = {c["name"]: _last(Path(c["output"])) for c in cfgs}
    keys = list(dict.fromkeys(k for r in rows.values() for k in r))
    print(f"\nAfter {cfgs[0]['data']['edits']} edits (last checkpoint):")
    print(f"  {'':<38}" + "".join(f"{name:>14}" for name in rows))
    for key in keys:
        cells = "".join(f"{rows[n][key]:>14.3g}" if key in rows[n] else f"{'–':>14}"
                        for n in rows)
        print(f"  {key:<38}{cells}")
    print(f"\nReport: {paths['html']}\n(plots in {paths['html'].parent}; the runs continue with "
          f"`seqedit run {out}/memit/run.yaml`; done in {time.perf_counter() - started:.0f} s)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="MEMIT with and without D4S on the packaged model, compared",
                       description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 edits per run (end-to-end check)")
    p.add_argument("--out", help="demo directory (default ./seqedit-demo, or "
                                 "./seqedit-demo-quick with --quick)")
    p.add_argument("--edits", type=int, help="edits per run (default 100; 4 with --quick)")
    p.set_defaults(handler=run_demo)
