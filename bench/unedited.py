"""Unedited scores of a packaged model on every general and safety task, one task at a time.

    python bench/unedited.py --model gemma3-270m              # limit 200, 1 thread
    python bench/unedited.py --model smollm2-135m --tasks sst2 rte --table

Each finished task is appended to `bench/results/unedited-<model>-limit<N>.jsonl` at once, so a
killed run resumes at the next task (finished ones are not run again); `--table` prints the
markdown table of bench/RESULTS.md from that file. Scores, chance level, no-signal and muting
come from the evaluators' own `prepare` (docs/protocol.md), seconds are its wall time.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from seqedit import metrics, models
from seqedit._atomic import write_atomic
from seqedit.metrics.base import EvalContext
from seqedit.metrics.general import GENERAL_TASKS
from seqedit.metrics.safety import SAFETY_TASKS

RESULTS = Path(__file__).parent / "results"


def measure(model, tok, task: str, limit: int, cache_dir: Path | None) -> dict:
    family = "general" if task in GENERAL_TASKS else "safety"
    ev = metrics.create(family, tasks=[task], limit=limit)
    ctx = EvalContext(tokenizer=tok, spec=models.spec(model), cache_dir=cache_dir)
    start = time.perf_counter()
    ev.prepare(model, ctx)
    seconds = time.perf_counter() - start
    result = ev.unedited_result(ctx)
    info = result.info[task]
    return {"task": task, "family": family, "limit": ev._limit(task), "seconds": seconds,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "info": info, "metrics": [m.to_dict() for m in result.metrics]}


def table(rows: list[dict]) -> str:
    lines = ["| task | n | metric | score | stderr | chance | no-signal | modal share | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        info = row["info"]
        scores = [m for m in row["metrics"] if not m["name"].endswith(".modal_share")]
        main = next((m for m in scores if m["name"].endswith("." + info["primary"])), scores[0])
        mute = info.get("muting") or {}
        share = mute.get("modal_share")
        flag = {True: "yes", False: "no", None: "n/a"}[info["no_signal"]]
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {:.0f} |".format(
            row["task"], main.get("n"), info["primary"], _num(main["value"]),
            _num(main.get("stderr")), _num(info["chance"]), flag,
            "—" if share is None else f"{share:.2f}" + (" (muted)" if mute.get("muted") else ""),
            row["seconds"]))
    return "\n".join(lines)


def _num(x) -> str:
    return "—" if x is None else f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--tasks", nargs="*", default=[*GENERAL_TASKS, *SAFETY_TASKS])
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--table", action="store_true", help="print the table and exit")
    args = ap.parse_args(argv)
    out = RESULTS / f"unedited-{args.model}-limit{args.limit}.jsonl"
    done = ([json.loads(line) for line in out.read_text().splitlines() if line.strip()]
            if out.exists() else [])
    if args.table:
        print(table([r for r in done if r["task"] in args.tasks]))
        return
    torch.set_num_threads(args.threads)
    model, tok = models.load(args.model)
    finished = {r["task"] for r in done}
    for task in args.tasks:
        if task in finished:
            continue
        print(f"{args.model}: {task} ...", flush=True)
        row = measure(model, tok, task, args.limit, args.cache_dir)
        RESULTS.mkdir(exist_ok=True)
        text = out.read_text() if out.exists() else ""
        write_atomic(out, (text + json.dumps(row) + "\n").encode())
        print(f"  {row['seconds']:.0f} s  {row['info']}", flush=True)
    print(table([json.loads(line) for line in out.read_text().splitlines() if line.strip()]))


if __name__ == "__main__":
    main()
