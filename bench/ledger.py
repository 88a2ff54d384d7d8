"""What the ledger's guarantees cost: fingerprinting every parameter, and bit-exact replay.

    python bench/ledger.py                 # SmolLM2-135M + one Llama-2-7B-shaped bf16 layer
    python bench/ledger.py --edits 200

1. `integrity.model_fingerprint` (sha256 of every parameter and buffer) on the packaged
   SmolLM2-135M, and on the tensors of one Llama-2-7B decoder layer in bf16 (the 7B figure is
   that time × 32 layers + embeddings and head, at the measured bytes/s: stated as extrapolated).
2. Replay of `--edits` rank-1 deltas on SmolLM2's MEMIT layers: step by step (what `replay` does,
   one fused update per edit, bit-exact) vs all deltas of a chunk of 64 stacked into one update
   (the old fast path, ~1e-7 away), in the same process, medians of 3.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from seqedit import models
from seqedit.editors.base import Delta, LayerDelta
from seqedit.session.checks import apply_delta
from seqedit.session.integrity import model_fingerprint

LLAMA7B = {"hidden": 4096, "mlp": 11008, "layers": 32, "vocab": 32000}


def timed(fn, rounds: int = 3) -> float:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


class _Layer(torch.nn.Module):
    def __init__(self, h: int, m: int) -> None:
        super().__init__()
        for name, shape in (("q", (h, h)), ("k", (h, h)), ("v", (h, h)), ("o", (h, h)),
                            ("gate", (m, h)), ("up", (m, h)), ("down", (h, m))):
            self.register_parameter(name, torch.nn.Parameter(
                torch.randn(shape, dtype=torch.bfloat16), requires_grad=False))
        self.register_buffer("norm", torch.ones(h, dtype=torch.bfloat16))


def bench_fingerprint() -> dict:
    model, _ = models.load("smollm2-135m")
    small_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    small = timed(lambda: model_fingerprint(model))
    layer = _Layer(LLAMA7B["hidden"], LLAMA7B["mlp"])
    layer_bytes = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
    per_layer = timed(lambda: model_fingerprint(layer))
    rate = layer_bytes / per_layer
    total = LLAMA7B["layers"] * layer_bytes + 2 * LLAMA7B["vocab"] * LLAMA7B["hidden"] * 2
    return {"smollm2_s": small, "smollm2_mb": small_bytes / 1e6, "layer_s": per_layer,
            "gb_per_s": rate / 1e9, "llama7b_gb": total / 1e9, "llama7b_s": total / rate}


def bench_replay(edits: int) -> dict:
    model, _ = models.load("smollm2-135m")
    spec = models.spec(model)
    names = [spec.mlp_out_weight_name(layer) for layer in spec.default_edit_layers()]
    gen = torch.Generator().manual_seed(0)
    deltas = []
    for _ in range(edits):
        layers = []
        for name in names:
            d_out, d_in = model.get_parameter(name).shape
            layers.append(LayerDelta(name, torch.randn(d_out, 1, generator=gen) * 1e-3,
                                     torch.randn(d_in, 1, generator=gen)))
        deltas.append(Delta("bench", layers))
    base = {n: model.get_parameter(n).detach().clone() for n in names}

    def reset():
        with torch.no_grad():
            for n in names:
                model.get_parameter(n).copy_(base[n])

    def step_by_step():
        reset()
        for delta in deltas:
            apply_delta(model, delta, 1.0)

    def stacked():
        reset()
        for start in range(0, len(deltas), 64):
            chunk = deltas[start:start + 64]
            apply_delta(model, Delta("bench", [
                LayerDelta(n, torch.cat([d.layers[i].u for d in chunk], 1),
                           torch.cat([d.layers[i].v for d in chunk], 1))
                for i, n in enumerate(names)]), 1.0)

    exact, fused = timed(step_by_step), timed(stacked)
    step_by_step()
    a = {n: model.get_parameter(n).detach().clone() for n in names}
    stacked()
    gap = max(float((a[n] - model.get_parameter(n)).abs().max()) for n in names)
    return {"edits": edits, "layers": len(names), "step_s": exact, "stacked_s": fused,
            "max_abs_gap": gap}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"bench/ledger.py: {args.threads} thread(s), torch {torch.__version__}")
    f = bench_fingerprint()
    print(f"fingerprint: SmolLM2-135M ({f['smollm2_mb']:.0f} MB) {f['smollm2_s']:.2f} s; one "
          f"Llama-2-7B bf16 layer {f['layer_s']:.2f} s ({f['gb_per_s']:.2f} GB/s) -> a 7B model "
          f"({f['llama7b_gb']:.1f} GB) ~{f['llama7b_s']:.0f} s (extrapolated)")
    r = bench_replay(args.edits)
    print(f"replay of {r['edits']} edits x {r['layers']} layers: step by step {r['step_s']:.3f} s"
          f" vs stacked in chunks of 64 {r['stacked_s']:.3f} s ({r['step_s'] / r['stacked_s']:.1f}"
          f"x); stacked differs by up to {r['max_abs_gap']:.1e}")


if __name__ == "__main__":
    main()
