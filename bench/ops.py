"""seqedit's op kernels vs the pure-PyTorch way, at the MLP output projection of real models.

    python bench/ops.py                 # SmolLM2-135M (576x1536) and Llama-3-8B (4096x14336) shapes
    python bench/ops.py --quick         # SmolLM2 shapes only, about a minute
    python bench/ops.py --device cuda   # the same on the GPU
    python bench/ops.py --products      # why top_singular multiplies with the thin block on the left

What each row compares (both sides in this process, same inputs, warm-up then the median of
--reps runs; Llama-size SVD baselines run once because each takes about a minute):
- second_moment_: float64 acc += Σ k kᵀ for N float32 keys of width d_in. Baseline:
  `kd = k.double(); acc.addmm_(kd.T, kd)` — float64 arithmetic is what it takes to be as accurate
  (a float32 accumulator drifts, see tests/ops/test_second_moment.py). GFLOP/s counts the full
  Gram matrix (2·N·d²) for both, though ours computes only the upper triangle of it.
- rank_update_(stats=True): W[d_out, d_in] += α U Vᵀ plus Σ|W_new|, Σ|ΔW|, ‖ΔW‖²_F. Baseline:
  `W.addmm_(u, v.T, alpha=a)`; `d = a·(u @ v.T)`; `W.abs().sum()`, `d.abs().sum()`, `d.norm()²`
  (a bf16 W is updated as `W.copy_(W.float() + d)` so it is rounded once, like ours). GB/s counts
  one read and one write of W, the least any implementation must move.
- top_singular(k=16, tol=1e-4) vs `torch.linalg.svdvals` on A = 0.02·G + X diag(s) Yᵀ: Gaussian
  noise G (the scale of initialised LLM weights) plus 32 spikes s_i = e·(1 + 9·0.8^i) above the
  noise edge e = 0.02(√m + √n), X, Y random orthonormal — a decaying spectrum whose 16th value sits
  close to the bulk, the slow case for subspace iteration. "error" is max_i |S_i − σ_i| / σ_0
  against svdvals. GFLOP/s counts the products with A and Aᵀ (4·m·n·p per iteration).
--products times the two products of a subspace iteration (A V and Aᵀ Q, V and Q thin blocks of
p = 32 columns) written the plain way and with the thin block on the left, (Vᵀ Aᵀ)ᵀ and (Qᵀ A)ᵀ,
in float32 and float64, at both shapes and their transposes.
Machine limits, measured in the same run: stream bandwidth from `torch.add(x, 1, out=y)` over
256 MiB, and float32 matmul throughput from a 4096² `torch.mm`.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from seqedit import ops

SHAPES = {"SmolLM2-135M": (576, 1536), "Llama-3-8B": (4096, 14336)}
QUICK_SHAPES = {"SmolLM2-135M": (576, 1536)}
KEYS_PER_CALL = {576: 4096, 4096: 256}  # a batch of tokens; Llama's acc is 14336² float64


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            names = (line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
            return next(names)
    except (OSError, StopIteration):
        return platform.processor()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def machine_limits(device, reps):
    x = torch.rand(64 << 20, device=device)
    y = torch.empty_like(x)
    gbs = 2 * x.numel() * 4 / median_ms(lambda: torch.add(x, 1.0, out=y), device, reps) / 1e6
    a = torch.rand(4096, 4096, device=device)
    b = torch.rand(4096, 4096, device=device)
    gflops = 2 * 4096**3 / median_ms(lambda: torch.mm(a, b), device, reps) / 1e6
    return gbs, gflops


def bench_second_moment(d_out, d_in, device, reps):
    n = KEYS_PER_CALL[d_out]
    g = torch.Generator().manual_seed(0)
    keys = (torch.randn(n, d_in, generator=g) + 0.5).to(device)
    acc = torch.zeros(d_in, d_in, dtype=torch.float64, device=device)
    ours = median_ms(lambda: ops.second_moment_(acc, keys), device, reps)

    def torch_way():
        kd = keys.double()
        acc.addmm_(kd.T, kd)

    theirs = median_ms(torch_way, device, reps)
    gflop = 2 * n * d_in**2 / 1e9
    return dict(op="second_moment_", shape=f"N={n} d={d_in}", dtype="f32→f64", ours=ours,
                theirs=theirs,
                achieved=f"{gflop / ours * 1e3:.1f} GFLOP/s", kind="flops")


def bench_rank_update(d_out, d_in, k, dtype, device, reps):
    g = torch.Generator().manual_seed(1)
    w = (0.02 * torch.randn(d_out, d_in, generator=g)).to(dtype=dtype, device=device)
    u = torch.randn(d_out, k, generator=g).to(device)
    v = torch.randn(d_in, k, generator=g).to(device)
    alpha = 1e-3
    ours = median_ms(lambda: ops.rank_update_(w, u, v, alpha, stats=True), device, reps)

    def torch_way():
        d = torch.mm(u, v.T).mul_(alpha)
        if w.dtype == torch.float32:
            w.addmm_(u, v.T, alpha=alpha)
        else:
            w.copy_(w.float().add_(d))
        return torch.stack([w.abs().sum(), d.abs().sum(), d.norm() ** 2]).tolist()

    theirs = median_ms(torch_way, device, reps)
    gbytes = 2 * w.numel() * w.element_size() / 1e9
    return dict(op="rank_update_", shape=f"{d_out}x{d_in} k={k}",
                dtype=str(dtype).removeprefix("torch."),
                ours=ours, theirs=theirs, achieved=f"{gbytes / ours * 1e3:.1f} GB/s", kind="bw")


def spiked_matrix(m, n, device, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.linalg.qr(torch.randn(m, 32, generator=g))[0]
    y = torch.linalg.qr(torch.randn(n, 32, generator=g))[0]
    edge = 0.02 * (math.sqrt(m) + math.sqrt(n))
    s = edge * (1 + 9 * 0.8 ** torch.arange(32, dtype=torch.float32))
    return (0.02 * torch.randn(m, n, generator=g) + (x * s) @ y.T).to(device)


def iterations_used(a, k):
    """Smallest max_iter giving the converged result (the op does not report its count)."""
    full = ops.top_singular(a, k)[0]
    lo, hi = 1, ops.DEFAULT_MAX_ITER
    while lo < hi:
        mid = (lo + hi) // 2
        if torch.equal(ops.top_singular(a, k, max_iter=mid)[0], full):
            hi = mid
        else:
            lo = mid + 1
    return lo


def bench_top_singular(d_out, d_in, device, reps, k=16):
    a = spiked_matrix(d_out, d_in, device)
    ours = median_ms(lambda: ops.top_singular(a, k), device, reps)
    svd_reps = 1 if d_out * d_in > 10**7 else reps
    if svd_reps == 1:
        start = time.perf_counter()
        sv = torch.linalg.svdvals(a)
        sync(device)
        theirs = 1e3 * (time.perf_counter() - start)
    else:
        theirs = median_ms(lambda: torch.linalg.svdvals(a), device, svd_reps)
        sv = torch.linalg.svdvals(a)
    S = ops.top_singular(a, k)[0]
    error = ((S - sv[:k]).abs().max() / sv[0]).item()
    p = min(d_out, d_in, k + max(k, 10))
    gflop = 4 * d_out * d_in * p * iterations_used(a, k) / 1e9
    return dict(op="top_singular", shape=f"{d_out}x{d_in} k={k}", dtype="f32", ours=ours,
                theirs=theirs,
                achieved=f"{gflop / ours * 1e3:.1f} GFLOP/s", kind="flops",
                note=f"error {error:.1e}" + ("; svdvals 1 run" if svd_reps == 1 else ""))


def bench_products(device, reps, p=32):
    """Median ms of the four ways to write top_singular's two products, per shape and dtype."""
    print("| shape | dtype | A V | (Vᵀ Aᵀ)ᵀ | Aᵀ Q | (Qᵀ A)ᵀ |")
    print("|---|---|---|---|---|---|")
    for m, n in [s for shape in SHAPES.values() for s in (shape, shape[::-1])]:
        for dtype in (torch.float32, torch.float64):
            g = torch.Generator().manual_seed(0)
            a, v, q = (torch.randn(*s, generator=g, dtype=dtype).to(device)
                       for s in ((m, n), (n, p), (m, p)))
            times = [median_ms(f, device, reps) for f in (
                lambda: a @ v, lambda: (v.mT @ a.mT).mT, lambda: a.mT @ q, lambda: (q.mT @ a).mT)]
            print(f"| {m}x{n} | {str(dtype)[6:]} | " + " | ".join(f"{t:.1f}" for t in times) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmolLM2 shapes only")
    parser.add_argument("--products", action="store_true",
                        help="only time the product orders of top_singular's iteration")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: what torch picks, i.e. the cores there are)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.products:
        print(f"# {platform.machine()} {cpu_name()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, device {device}; median ms of {args.reps}")
        return bench_products(device, args.reps)
    gbs, gflops = machine_limits(device, args.reps)
    print(f"# {platform.machine()} {cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}, backends {ops.backends()}")
    print(f"# measured limits: stream {gbs:.1f} GB/s (torch.add over 256 MiB), "
          f"float32 matmul {gflops:.1f} GFLOP/s (4096² torch.mm)")

    rows = []
    for model, (d_out, d_in) in (QUICK_SHAPES if args.quick else SHAPES).items():
        rows += [
            {"model": model, **row}
            for row in (
                bench_second_moment(d_out, d_in, device, args.reps),
                bench_rank_update(d_out, d_in, 1, torch.float32, device, args.reps),
                bench_rank_update(d_out, d_in, 16, torch.float32, device, args.reps),
                bench_rank_update(d_out, d_in, 16, torch.bfloat16, device, args.reps),
                bench_top_singular(d_out, d_in, device, args.reps),
            )
        ]

    header = ["op", "model", "shape", "dtype", "ours ms", "PyTorch ms", "ratio", "achieved",
              "limit", "note"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        limit = f"{gflops:.0f} GFLOP/s" if r["kind"] == "flops" else f"{gbs:.1f} GB/s"
        cells = [r["op"], r["model"], r["shape"], r["dtype"], f"{r['ours']:.2f}",
                 f"{r['theirs']:.2f}", f"{r['theirs'] / r['ours']:.1f}x", r["achieved"], limit,
                 r.get("note", "")]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
