"""The whole spectrum of each accumulated ΔW of a recorded run, against σ̄ = σ_max(W₀).

    python bench/delta_spectrum.py RUN_DIR [RUN_DIR ...] [--model smollm2-135m] [--every 200]

σ_max(ΔW)/σ_max(W₀), what weight health reports and PRUNE caps, is one number of the spectrum.
This reads the live edits of each session in RUN_DIR (any seqedit ledger, e.g. a
`bench/guards.py` run; read-only, safe while it is written) in order, accumulates their deltas as
applied (guards' changes included) and, after every `--every` live edit requests, prints per
edited weight: σ₁/σ̄, how many singular values reach 0.9 / 0.5 / 0.25 σ̄, ‖ΔW‖_F/σ̄ and the rank
of ΔW; and ‖ΔW C^½‖_F/‖W₀ C^½‖_F with C = E[kkᵀ] the layer's key statistics (the editors' own,
from the stats cache): the RMS change of the layer's output on the keys of general text relative
to the output itself — the spectrum weighted by how much text uses each direction. Exact: the
singular values come from the factors (`AccumulatedDelta.top_singular`, float64), σ̄ from a
float64 SVD of the unedited matrix. One thread.
"""
from __future__ import annotations

import argparse

import torch

from seqedit import models
from seqedit.editors.accumulated import AccumulatedDelta
from seqedit.session.ledger import read_delta
from seqedit.session.reader import read_run
from seqedit.stats import second_moments

LEVELS = (0.9, 0.5, 0.25)


def keys_weighted(delta: torch.Tensor, w0: torch.Tensor, c: torch.Tensor) -> float:
    """‖ΔW C^½‖_F / ‖W₀ C^½‖_F = sqrt(tr(ΔW C ΔWᵀ) / tr(W₀ C W₀ᵀ)); matrices [d_out, d_in]."""
    return float(((delta @ c) * delta).sum() / ((w0 @ c) * w0).sum()) ** 0.5


def report(run_dir: str, model, tokenizer, every: int) -> None:
    run = read_run(run_dir)
    live = set(run.live_edit_ids)
    acc, done = AccumulatedDelta(), 0
    base: dict[str, tuple[float, torch.Tensor, torch.Tensor]] = {}  # weight → (σ̄, W₀ [d_out, d_in], C)
    print(f"{run_dir}")
    spec = models.spec(model)
    layer_of = {spec.mlp_out_weight_name(i): i for i in range(spec.num_layers)}
    print("| live edits | weight | σ₁/σ̄ | " + " | ".join(f"# ≥ {x}σ̄" for x in LEVELS)
          + " | ‖ΔW‖_F/σ̄ | rank | ‖ΔW C^½‖/‖W₀ C^½‖ |")
    print("|---:|---|---:|" + "---:|" * len(LEVELS) + "---:|---:|---:|")
    for record in run.edits:
        if record["edit_id"] not in live:
            continue
        acc.add(read_delta(run_dir, record["delta"], record["method"]))
        before, done = done, done + len(record["requests"])
        if done // every == before // every:
            continue
        missing = [n for n in acc.names if n not in base]
        if missing:
            moments = second_moments(model, tokenizer, sorted(layer_of[n] for n in missing),
                                     progress=False)
            for name in missing:
                w0 = model.get_parameter(name).detach().double()
                w0 = w0.T if spec.mlp_out_transposed else w0  # ΔW's factors are [d_out, ·], [d_in, ·]
                base[name] = (float(torch.linalg.matrix_norm(w0, ord=2)), w0,
                              moments[layer_of[name]][0])
        for name in acc.names:
            bar, w0, c = base[name]
            s = acc.top_singular(name)[0]
            counts = " | ".join(str(int((s >= x * bar).sum())) for x in LEVELS)
            weighted = keys_weighted(acc.dense(name), w0, c)
            print(f"| {done} | {name} | {float(s[0]) / bar:.3f} | {counts} | "
                  f"{float(s.norm()) / bar:.2f} | {len(s)} | {weighted:.3f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="session directories (manifest.json, ledger.jsonl, deltas/)")
    ap.add_argument("--model", default="smollm2-135m", help="the packaged model the runs edited")
    ap.add_argument("--every", type=int, default=200, help="print after every n live edit requests")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, tokenizer = models.load(args.model)
    for run_dir in args.runs:
        report(run_dir, model, tokenizer, args.every)


if __name__ == "__main__":
    main()
