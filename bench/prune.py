"""PRUNE's restraint of one weight matrix: ours from the factored ΔW vs the original's dense way.

    python bench/prune.py            # Llama-3-8B MLP out (4096x14336), ΔW of rank 100 and 1000
    python bench/prune.py --quick    # SmolLM2-135M shape (576x1536), every piece measured

Single-threaded (BLAS and torch), in one process, same inputs for both sides.
- W₀ = 0.02·G + 32 spikes above the noise edge (the spectrum of bench/ops.py); ΔW = X diag(s) Yᵀ
  with X, Y random orthonormal and s_i = 2.2·σ̄/√(i+1): four directions above σ̄, a slow tail (a
  full-rank-looking accumulated change, not a few spikes).
- ours: `guards.prune.restraint(U, V, σ̄, "log")` on float64 factors U = X diag(s), V = Y (what
  the session's AccumulatedDelta holds); warm-up, then the median of --reps runs. σ̄ =
  `guards.prune.base_sigma(W₀)` is timed once on its own: the guard computes it once per weight
  per session.
- the original (spec §1.2–1.3, numpy float32 like its code): ΔW = W_n − W₀; full SVDs
  (full_matrices=True) of ΔW, W₀ and W_n; matrix_rank(ΔW); F on the singular values and
  W₀ + U[:, :r] diag(F(s)[:r]) Vᵀ[:r]. On the Llama shape a full SVD takes 3–6 minutes on one
  core here, so `--svds` says which are run, once each: `delta` (default, 10–13 min) the SVD of
  ΔW at the largest rank only; `largest` (≈ 20 min) all three at the largest rank; `all` every
  one at every rank (≈ 35 min). An SVD not run is counted at the measured time of the same
  matrix at the largest rank (W₀ is the same matrix at every rank), else at that of ΔW; the note
  column says which. Measured times varied 210–350 s between matrices of this shape and runs, so
  a counted time is an estimate. The rebuild of a rank whose SVDs were not run is timed on the
  known factors X, F(s), Y (the same shapes).
- "dense SVD" is the one step no dense way avoids: the full SVD of ΔW alone.
- error: ‖ΔW̃ − X diag(F(s)) Yᵀ‖_F / ‖ΔW̃‖_F against the exact answer, known by construction.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch load their BLAS: the bench is one-core

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from seqedit.guards.prune import base_sigma, restrain_values, restraint  # noqa: E402

SHAPE = (4096, 14336)
QUICK_SHAPE = (576, 1536)
KIND = "log"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def base_weight(m, n, g):
    x = torch.linalg.qr(torch.randn(m, 32, generator=g))[0]
    y = torch.linalg.qr(torch.randn(n, 32, generator=g))[0]
    edge = 0.02 * (math.sqrt(m) + math.sqrt(n))
    s = edge * (1 + 9 * 0.8 ** torch.arange(32, dtype=torch.float32))
    return 0.02 * torch.randn(m, n, generator=g) + (x * s) @ y.T


def change(m, n, rank, sigma_bar, g):
    """(X, s, Y) float64 with ΔW = X diag(s) Yᵀ: four singular values above σ̄."""
    x = torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64))[0]
    y = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))[0]
    s = 2.2 * sigma_bar / torch.arange(1, rank + 1, dtype=torch.float64).sqrt()
    return x, s, y


def ours(x, s, y, sigma_bar, reps):
    u = x * s
    restraint(u, y, sigma_bar, KIND)  # warm-up
    times = [timed(lambda: restraint(u, y, sigma_bar, KIND))[0] for _ in range(reps)]
    cu, cv = restraint(u, y, sigma_bar, KIND)
    return statistics.median(times), u @ y.T + cu @ cv.T, cu.shape[1]


def original(w0, wn, sigma_bar, run, known):
    """The original's steps on float32 numpy arrays: (seconds per step, ΔW̃ or None, rank).
    `run`: which full SVDs to run ("ΔW", "W₀", "W_n"); without ΔW's the rebuild uses `known`
    = (X, s, Y)."""
    t = {}
    t["subtract"], dw = timed(lambda: wn - w0)
    for name, a in (("W₀", w0), ("W_n", wn)):
        if name in run:
            t[f"svd {name}"], _ = timed(lambda: np.linalg.svd(a, full_matrices=True))
    if "ΔW" in run:
        t["svd ΔW"], (u, s, vh) = timed(lambda: np.linalg.svd(dw, full_matrices=True))
    else:
        u, s, vh = (a.numpy().astype(np.float32) for a in known)
        vh = vh.T
    t["matrix_rank"], r = timed(lambda: np.linalg.matrix_rank(dw))

    def rebuild():
        f = restrain_values(torch.from_numpy(s[:r]).double(), sigma_bar, KIND).float().numpy()
        dwt = (u[:, :r] * f) @ vh[:r]
        return dwt, w0 + dwt

    t["F + rebuild"], (dwt, _) = timed(rebuild)
    return t, (dwt if "ΔW" in run else None), int(r)


def error(got, exact):
    return float(torch.linalg.norm(torch.as_tensor(got, dtype=torch.float64) - exact)
                 / torch.linalg.norm(exact))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmolLM2 shape, every SVD run")
    parser.add_argument("--svds", choices=["delta", "largest", "all"], default="delta",
                        help="which full SVDs to run (see above); --quick runs all")
    parser.add_argument("--ranks", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    m, n = QUICK_SHAPE if args.quick else SHAPE
    ranks = sorted({min(r, m) for r in args.ranks}, reverse=True)
    mode = "all" if args.quick else args.svds
    print(f"# {platform.machine()} {cpu_name()}, torch {torch.__version__}, numpy "
          f"{np.__version__}, {torch.get_num_threads()} torch thread, BLAS threads 1; "
          f"W {m}x{n} float32, kind {KIND!r}")

    g = torch.Generator().manual_seed(0)
    w0 = base_weight(m, n, g)
    sigma_time, sigma_bar = timed(lambda: base_sigma(w0))
    print(f"# σ̄ = base_sigma(W₀) = {sigma_bar:.6f}: {sigma_time:.2f} s, once per weight")
    w0_np = w0.numpy()

    rows, measured = [], {}
    for i, rank in enumerate(ranks):  # the largest first: its SVDs stand in for the others
        x, s, y = change(m, n, rank, sigma_bar, g)
        exact = (x * restrain_values(s, sigma_bar, KIND)) @ y.T
        ours_s, ours_dwt, restrained = ours(x, s, y, sigma_bar, args.reps)
        wn_np = (w0.double() + (x * s) @ y.T).float().numpy()
        run = {"ΔW", "W₀", "W_n"} if mode == "all" or (mode == "largest" and i == 0) else (
            {"ΔW"} if i == 0 else set())
        steps, orig_dwt, np_rank = original(w0_np, wn_np, sigma_bar, run, (x, s, y))
        if i == 0:
            measured = {k: v for k, v in steps.items() if k.startswith("svd")}
        reused = []
        for key in ("svd ΔW", "svd W₀", "svd W_n"):
            if key not in steps:
                steps[key] = measured.get(key, measured["svd ΔW"])
                source = key if key in measured else "svd ΔW"
                reused.append(f"{key} at r={ranks[0]}'s {source.removeprefix('svd ')}")
        note = "counted: " + ", ".join(reused) if reused else "every SVD run"
        rows.append(dict(rank=rank, restrained=restrained, np_rank=np_rank, ours=ours_s,
                         total=sum(steps.values()), svd=steps["svd ΔW"], steps=steps, note=note,
                         err_ours=error(ours_dwt, exact),
                         err_orig=error(orig_dwt, exact) if orig_dwt is not None else None))
        del ours_dwt, orig_dwt, wn_np, exact

    header = ["ΔW rank", "restrained", "ours ms", "original's way s", "ratio", "dense SVD s",
              "ratio", "error ours", "error original", "note"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in sorted(rows, key=lambda r: r["rank"]):
        cells = [str(r["rank"]), str(r["restrained"]), f"{1e3 * r['ours']:.0f}",
                 f"{r['total']:.1f}", f"{r['total'] / r['ours']:.0f}x", f"{r['svd']:.1f}",
                 f"{r['svd'] / r['ours']:.0f}x", f"{r['err_ours']:.1e}",
                 "—" if r["err_orig"] is None else f"{r['err_orig']:.1e}", r["note"]]
        print("| " + " | ".join(cells) + " |")
    for r in sorted(rows, key=lambda r: r["rank"]):
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["steps"].items())
        print(f"# r={r['rank']}: original's steps (s): {parts}; matrix_rank gave {r['np_rank']}; "
              f"ours median of {args.reps}")


if __name__ == "__main__":
    main()
