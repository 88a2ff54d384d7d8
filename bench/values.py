"""Batched target-value optimisation: requests that have stopped leave the batch.

    python bench/values.py                    # SmolLM2-135M, 16 CounterFact requests, MEMIT's value config
    python bench/values.py --n 10 --repeats 3 --threads 1

MEMIT (a batch of requests per edit) and the D4S guard (16 requests ahead) optimise the targets
of many requests in one padded batch. Each repeat runs the fast path twice on the same requests,
taking turns at going first so both see the same machine load: "kept" keeps every request's rows
in every forward and backward until the slowest request stops (`compact=False`: the cost before
stopped requests left the batch), "compact" runs only the rows of the requests still optimising.
Printed: median wall and process-CPU seconds of each, their ratio, the steps per request, the
ratio the row counts predict for the steps alone (b · (max + 1) / Σ (steps + 1) forwards; the
recording forward and the fixed per-call costs are the same for both), and how far the two
results differ (float32 rounding of another batch shape; the steps must be equal).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from seqedit import data, editors
from seqedit.editors import EditContext
from seqedit.editors import keys as editor_keys
from seqedit.editors import values
from seqedit.editors.memit import resolve_targets
from seqedit.models import load, spec as model_spec


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a packaged model name (see seqedit.models.load)")
    ap.add_argument("--method", default="memit", help="the editor whose value config and layers are used")
    ap.add_argument("--n", type=int, default=16, help="CounterFact requests optimised in one batch")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each variant (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    spec = model_spec(model)
    cfg = editors.create(args.method, spec).config
    ctx = EditContext(tokenizer, spec, seed=0)
    layers = sorted(cfg.layers)
    site = resolve_targets(model, ctx, cfg)
    where = {"layer": layers[-1]} if site == "block" else {"layer": tuple(layers)}
    templates = editor_keys.context_templates(model, tokenizer, ctx, starts=cfg.context_template_starts,
                                              length=cfg.context_template_length)
    requests = data.load("counterfact", limit=args.n)

    def solve(compact: bool):
        return values._fast_target_values(model, spec, tokenizer, requests, templates, site=site, cfg=cfg,
                                          compact=compact, **where)

    times = {"kept": [], "compact": []}
    results = {}
    for i in range(args.repeats):
        for name in (["kept", "compact"] if i % 2 == 0 else ["compact", "kept"]):
            results[name], wall, cpu = timed(lambda: solve(name == "compact"))
            times[name].append((wall, cpu))
            print(f"repeat {i}: {name:<8} {wall:7.1f} s wall {cpu:7.1f} s CPU", flush=True)
    kept, compact = results["kept"], results["compact"]
    if kept.steps != compact.steps:
        raise SystemExit(f"the steps differ: kept {kept.steps}, compact {compact.steps}")
    steps = compact.steps
    predicted = len(steps) * (max(steps) + 1) / sum(s + 1 for s in steps)
    med = {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}
    print(f"\nTarget values, {args.model}, {args.method} config ({site} site, layers {layers}), {args.n} CounterFact "
          f"requests in one batch, CPU ({torch.get_num_threads()} threads), median of {args.repeats}")
    print(f"steps per request: {steps} (Σ {sum(steps)}, max {max(steps)}); "
          f"rows predict {predicted:.2f}x for the steps")
    print(f"{'variant':<9} {'wall s':>8} {'CPU s':>8}")
    for name, (wall, cpu) in med.items():
        print(f"{name:<9} {wall:>8.1f} {cpu:>8.1f}")
    print(f"speed-up: {med['kept'][0] / med['compact'][0]:.2f}x wall, {med['kept'][1] / med['compact'][1]:.2f}x CPU")
    diffs = {name: rel_diff(getattr(compact, name), getattr(kept, name)) for name in ("v_star", "delta")}
    diffs["loss"] = max(abs(a - b) / abs(b) for a, b in zip(compact.loss, kept.loss))
    diffs["p_last"] = max(abs(a - b) / abs(b) for a, b in zip(compact.p_last, kept.p_last))
    print("largest relative difference, compact vs kept: "
          + ", ".join(f"{name} {d:.1e}" for name, d in diffs.items()))


if __name__ == "__main__":
    main()
