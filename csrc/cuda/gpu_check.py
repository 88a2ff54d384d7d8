"""Check and time the seqedit CUDA kernels on a GPU (they were written on a machine without one).

Run from anywhere, with the CUDA build of seqedit installed in the interpreter:
    python csrc/cuda/gpu_check.py            # correctness + timings, prints two tables
    python csrc/cuda/gpu_check.py --quick    # correctness only, small sizes

Every check compares against float64 references on fresh random data (never zeros), starts
from a non-zero accumulator / weight, and poisons nothing it does not own. The second-moment
checks run both kernels (tensor-core "mma" and FFMA "simt", chosen through the
SEQEDIT_SECOND_MOMENT_KERNEL environment variable that the extension reads on every call).
Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

import seqedit._C  # noqa: F401  (registers torch.ops.seqedit)

ops = torch.ops.seqedit
dev = torch.device("cuda")
failures: list[str] = []


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    den = b.norm().item()
    return (a - b).norm().item() / (den if den > 0 else 1.0)


def report(name: str, err: float, tol: float) -> None:
    ok = err <= tol and err == err
    if not ok:
        failures.append(f"{name}: {err:.3e} > {tol:.1e}")
    print(f"{'ok  ' if ok else 'FAIL'} {name:<70} err={err:.2e} tol={tol:.0e}")


def timed(fn, reps: int = 20) -> float:
    """Median milliseconds of fn() measured with CUDA events after a warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


# ------------------------------------------------------------------ second moment


def check_second_moment(quick: bool) -> None:
    g = torch.Generator(device="cpu").manual_seed(1)
    shapes = [(0, 8), (1, 1), (33, 7), (1000, 128), (517, 200), (3000, 264), (257, 576)]
    if not quick:
        shapes += [(20000, 1536), (4099, 384)]
    for kernel in ("mma", "simt"):
        os.environ["SEQEDIT_SECOND_MOMENT_KERNEL"] = kernel
        for n, d in shapes:
            for kdt in (torch.float32, torch.bfloat16, torch.float16):
                for adt in (torch.float64, torch.float32):
                    for weighted in (False, True):
                        keys = (torch.randn(n, d, generator=g) + 0.3).to(kdt).to(dev)
                        w = torch.rand(n, generator=g).to(dev) if weighted else None
                        acc0 = torch.randn(d, d, generator=g, dtype=torch.float64)
                        acc0 = acc0 + acc0.T
                        acc = acc0.to(adt).to(dev)
                        kd = keys.double()
                        term = (kd * (w.double()[:, None] if weighted else 1)).T @ kd
                        ref = acc0.to(adt).double().to(dev) + term
                        ops.second_moment_(acc, keys, w)
                        tol = 1e-6 if adt == torch.float64 else 2e-6
                        report(f"second_moment[{kernel}] n={n} d={d} keys={kdt} acc={adt} w={weighted}",
                               rel(acc, ref), tol)
        # Layouts: keys as a row slice of a wider buffer, acc as a transposed view.
        buf = torch.randn(700, 264, generator=g).to(torch.bfloat16).to(dev)
        keys = buf[:, :256]
        acc = torch.zeros(256, 256, dtype=torch.float64, device=dev).t()
        ops.second_moment_(acc, keys, None)
        report(f"second_moment[{kernel}] strided keys / transposed acc", rel(acc, keys.double().T @ keys.double()), 1e-6)
        # List variant.
        accs = [torch.zeros(d, d, dtype=torch.float64, device=dev) for d in (64, 300)]
        ks = [torch.randn(500, d, generator=g).to(dev) for d in (64, 300)]
        ops.second_moment_list_(accs, ks, [None, None])
        report(f"second_moment_list_[{kernel}]", max(rel(a, k.double().T @ k.double()) for a, k in zip(accs, ks)), 1e-6)
    os.environ.pop("SEQEDIT_SECOND_MOMENT_KERNEL", None)

    # The contract: <= 1e-6 relative at N = 1e6 (float64 acc), in 64 calls of 2^14 keys and in one call.
    n_total, d = 1_000_000 if not quick else 100_000, 256
    for kdt in (torch.bfloat16, torch.float32):
        keys = (torch.randn(n_total, d, device=dev) * torch.rand(d, device=dev) + 0.5).to(kdt)
        ref = keys.double().T @ keys.double()
        acc = torch.zeros(d, d, dtype=torch.float64, device=dev)
        ops.second_moment_(acc, keys, None)
        report(f"second_moment N={n_total} d={d} keys={kdt} one call", rel(acc, ref), 1e-6)
        acc.zero_()
        for chunk in keys.split(1 << 14):
            ops.second_moment_(acc, chunk, None)
        report(f"second_moment N={n_total} d={d} keys={kdt} chunked", rel(acc, ref), 1e-6)
        diag_err = ((acc.diagonal() - ref.diagonal()).abs() / ref.diagonal().abs()).max().item()
        report(f"second_moment N={n_total} keys={kdt} max diag rel err (truncation bias)", diag_err, 1e-6)


def time_second_moment() -> list[str]:
    rows = []
    for n, d in ((262144, 1536), (262144, 576), (65536, 4096)):
        for kdt in (torch.bfloat16, torch.float32):
            keys = torch.randn(n, d, device=dev).to(kdt)
            acc = torch.zeros(d, d, dtype=torch.float64, device=dev)

            def ours():
                ops.second_moment_(acc, keys, None)

            def torch_way():
                k = keys.double()
                acc.add_(k.T @ k)

            t_ours, t_ref = timed(ours, 10), timed(torch_way, 10)
            tflops = 2 * n * d * d / t_ours / 1e9
            rows.append(f"second_moment N={n:<7} d={d:<5} {str(kdt):<15} ours {t_ours:8.3f} ms "
                        f"({tflops:6.1f} TFLOP/s full-GEMM equiv)  fp64 torch {t_ref:8.3f} ms  x{t_ref / t_ours:5.1f}")
    return rows


# ------------------------------------------------------------------ rank update


def check_rank_update(quick: bool) -> None:
    g = torch.Generator(device="cpu").manual_seed(2)
    shapes = [(1, 1), (129, 257), (1000, 333), (64, 4096)]
    if not quick:
        shapes += [(1536, 576)]
    for m, n in shapes:
        for k in (0, 1, 5, 40, 100):
            for wdt in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
                for transposed in (False, True):
                    for layout in ("contiguous", "t_view", "strided"):
                        shape = (n, m) if transposed else (m, n)
                        base = torch.randn(*shape, generator=g, dtype=torch.float64)
                        if layout == "contiguous":
                            W = base.to(wdt).to(dev)
                        elif layout == "t_view":
                            W = base.to(wdt).to(dev).T.contiguous().T
                        else:
                            big = torch.randn(2 * shape[0], 2 * shape[1], generator=g, dtype=torch.float64)
                            big[::2, ::2] = base
                            W = big.to(wdt).to(dev)[::2, ::2]
                        U = torch.randn(m, k, generator=g).to(dev)
                        V = torch.randn(n, k, generator=g).to(dev)
                        alpha = 0.37
                        W0 = W.double().clone()
                        delta = alpha * (U.double() @ V.double().T)
                        if transposed:
                            delta = delta.T
                        ref = W0 + delta
                        st = ops.rank_update_(W, U, V, alpha, transposed, True)
                        # One rounding into W's dtype: within half an ulp of W plus float32 error.
                        ulp = {torch.float32: 2**-23, torch.float64: 2**-52, torch.bfloat16: 2**-7, torch.float16: 2**-10}[wdt]
                        err = ((W.double() - ref).abs() / (ref.abs() + delta.abs().max() + 1e-30)).max().item()
                        tol = 1e-12 if wdt == torch.float64 else max(ulp, 1e-6)
                        name = f"rank_update m={m} n={n} k={k} W={wdt} T={transposed} {layout}"
                        report(name, err, tol)
                        st_ref = torch.tensor([W.double().abs().sum().item(), delta.abs().sum().item(),
                                               (delta**2).sum().item()], dtype=torch.float64)
                        report(name + " stats", rel(st.cpu(), st_ref), 1e-5 if wdt != torch.float64 else 1e-12)
    # list variant
    Ws = [torch.randn(300, 200, device=dev), torch.randn(200, 300, device=dev, dtype=torch.bfloat16)]
    Us = [torch.randn(300, 3, device=dev), torch.randn(300, 3, device=dev)]
    Vs = [torch.randn(200, 3, device=dev), torch.randn(200, 3, device=dev)]
    refs = [Ws[0].double() + 2.0 * Us[0].double() @ Vs[0].double().T,
            Ws[1].double() - 1.0 * (Us[1].double() @ Vs[1].double().T).T]
    out = ops.rank_update_list_(Ws, Us, Vs, [2.0, -1.0], [False, True], False)
    report("rank_update_list_", max(rel(w, r) for w, r in zip(Ws, refs)), 4e-3)
    report("rank_update_list_ empty stats", float(sum(t.numel() for t in out)), 0.0)


def time_rank_update() -> list[str]:
    rows = []
    x = torch.empty(1 << 28, dtype=torch.float32, device=dev)
    t_copy = timed(lambda: x.clone(), 10)
    peak = 2 * x.numel() * 4 / t_copy / 1e6  # GB/s read + write
    rows.append(f"device copy (clone of 1 GiB)         {peak:8.1f} GB/s")
    for wdt in (torch.bfloat16, torch.float32):
        W = torch.randn(11008, 4096, device=dev).to(wdt)
        for k in (1, 16, 64, 256):
            U = torch.randn(11008, k, device=dev)
            V = torch.randn(4096, k, device=dev)
            for stats in (False, True):
                t = timed(lambda: ops.rank_update_(W, U, V, 1e-9, False, stats), 10)
                t_ref = timed(lambda: W.add_((U @ V.T).to(wdt), alpha=1e-9), 10)
                gbs = 2 * W.numel() * W.element_size() / t / 1e6
                rows.append(f"rank_update W=11008x4096 {str(wdt):<15} k={k:<4} stats={stats!s:<5} {t:7.3f} ms "
                            f"{gbs:7.1f} GB/s ({100 * gbs / peak:5.1f}% of copy)  torch {t_ref:7.3f} ms x{t_ref / t:4.1f}")
    return rows


# ------------------------------------------------------------------ top singular


def check_top_singular() -> list[str]:
    g = torch.Generator(device="cpu").manual_seed(3)
    rows = []
    for dt in (torch.float32, torch.float64):
        for b in (None, 3):
            m, n, k = 300, 200, 6
            shape = (m, n) if b is None else (b, m, n)
            q1, _ = torch.linalg.qr(torch.randn(*shape[:-2], m, m, generator=g, dtype=torch.float64))
            q2, _ = torch.linalg.qr(torch.randn(*shape[:-2], n, n, generator=g, dtype=torch.float64))
            sv = torch.logspace(2, -3, n, dtype=torch.float64)
            a = (q1[..., :, :n] * sv) @ q2.mT
            S, U, V = ops.top_singular(a.to(dt).to(dev), k, 1e-6, 200, 0)
            report(f"top_singular {dt} batch={b} S", rel(S.cpu(), sv[:k].expand_as(S.cpu())), 1e-5)
            recon = (U * S.unsqueeze(-2)) @ V.mT
            best = (q1[..., :, :k] * sv[:k]) @ q2[..., :, :k].mT
            report(f"top_singular {dt} batch={b} rank-k reconstruction", rel(recon.cpu(), best), 1e-4)
            Sc, Uc, Vc = ops.top_singular(a.to(dt), k, 1e-6, 200, 0)
            report(f"top_singular {dt} batch={b} CUDA vs CPU kernel U", rel(U.cpu(), Uc), 1e-4)
            u = torch.randn(*shape[:-2], m, 12, generator=g, dtype=dt)
            v = torch.randn(*shape[:-2], n, 12, generator=g, dtype=dt)
            S2, U2, V2 = ops.top_singular_factored(u.to(dev), v.to(dev), 5)
            ref = torch.linalg.svdvals(u.double() @ v.double().mT)[..., :5]
            report(f"top_singular_factored {dt} batch={b}", rel(S2.cpu(), ref), 1e-5)
    A = torch.randn(4096, 11008, device=dev)
    t = timed(lambda: ops.top_singular(A, 10, 1e-4, 100, 0), 3)
    t_ref = timed(lambda: torch.linalg.svdvals(A), 3)
    rows.append(f"top_singular 4096x11008 k=10 f32: {t:8.2f} ms   torch.linalg.svdvals {t_ref:8.2f} ms")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__)
    check_second_moment(args.quick)
    check_rank_update(args.quick)
    rows = check_top_singular()
    if not args.quick:
        rows = time_second_moment() + time_rank_update() + rows
    print("\n".join(rows))
    print(f"\n{len(failures)} failures")
    for f in failures[:40]:
        print("  ", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
