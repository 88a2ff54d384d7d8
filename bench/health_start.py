"""Where weight health's σ_max iteration starts: fixed blocks (what `health` does) vs the previous
measurement's block (what it did before 2026-12-07), on the deltas of a recorded run.

    python bench/health_start.py RUN_DIR [--model smollm2-135m] [--weights 8] [--every 1]

Replays the live edits of the session in RUN_DIR (any seqedit ledger, e.g. a `bench/guards.py`
run) onto the unedited model's matrices, W = W₀ + ΣΔW in float32, and after every `--every`-th
edit measures σ_max(W) and σ_max(ΔW) both ways with `top_singular_from` at the evaluator's
default tolerance and block: "fixed" starts from W₀'s top right singular vectors (W) and a seeded
random block (ΔW), as `HealthEvaluator` does; "chained" from the block the previous measurement
reached. Prints total iterations, seconds (median per measurement, same process, alternating
order) and the largest relative difference between the two answers. One thread.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from seqedit import models
from seqedit.metrics.health import HealthConfig, top_singular_from
from seqedit.session.ledger import read_delta
from seqedit.session.reader import read_run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a session directory (manifest.json, ledger.jsonl, deltas/)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--weights", default="8", help="layer indices of the MLP out weights measured")
    ap.add_argument("--every", type=int, default=1, help="measure after every n-th live edit")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = HealthConfig()
    model, _ = models.load(args.model)
    spec = models.spec(model)
    names = [spec.mlp_out_weight_name(int(i)) for i in args.weights.split(",")]
    run = read_run(args.run)
    live = set(run.live_edit_ids)
    w0 = {n: model.get_parameter(n).detach().float().clone() for n in names}
    delta = {n: torch.zeros_like(w0[n]) for n in names}
    fixed, chained = {}, {}
    for n in names:
        vh = torch.linalg.svd(w0[n].double(), full_matrices=False)[2]
        gen = torch.Generator().manual_seed(0)
        fixed[(n, "w")] = vh[:cfg.block].T.float().contiguous()
        fixed[(n, "d")] = torch.randn(w0[n].shape[1], cfg.block, generator=gen,
                                      dtype=torch.float64).float()
    chained.update(fixed)
    iters = {"fixed": 0, "chained": 0}
    seconds = {"fixed": [], "chained": []}
    worst, measured = 0.0, 0
    for k, rec in enumerate(e for e in run.edits if e["edit_id"] in live):
        d = read_delta(run.directory, rec["delta"], rec["method"])
        for layer in d.layers:
            if layer.name in delta:
                dw = layer.u.float() @ layer.v.float().T
                delta[layer.name] += dw.T if layer.transposed else dw
        if (k + 1) % args.every:
            continue
        measured += 1
        answers = {}
        for way in (("fixed", "chained") if measured % 2 else ("chained", "fixed")):
            t = time.perf_counter()
            for n in names:
                for part, a in (("w", w0[n] + delta[n]), ("d", delta[n])):
                    starts = fixed if way == "fixed" else chained
                    sigma, block, it = top_singular_from(a, starts[(n, part)], tol=cfg.tol,
                                                         max_iter=cfg.max_iter)
                    if way == "chained":
                        chained[(n, part)] = block
                    iters[way] += it
                    answers[(way, n, part)] = sigma
            seconds[way].append(time.perf_counter() - t)
        for n in names:
            for part in ("w", "d"):
                a, b = answers[("fixed", n, part)], answers[("chained", n, part)]
                worst = max(worst, abs(a - b) / max(abs(b), 1e-30))
    print(f"bench/health_start.py: {args.run}, {measured} measurements of {len(names)} "
          f"weight(s), tol {cfg.tol:g}, block {cfg.block}, torch {torch.__version__}, 1 thread")
    for way in ("fixed", "chained"):
        print(f"  {way:8s} {iters[way]:6d} iterations, median "
              f"{1000 * statistics.median(seconds[way]):.1f} ms per measurement")
    print(f"  iterations fixed/chained {iters['fixed'] / iters['chained']:.2f}; seconds "
          f"{statistics.median(seconds['fixed']) / statistics.median(seconds['chained']):.2f}; "
          f"largest relative difference of the answers {worst:.1e}")


if __name__ == "__main__":
    main()
