"""How much of general text does AlphaEdit's "null space" carry? Per edited layer of a model:
the dimensions of the projector and the share of the key energy (trace of C = E[kkᵀ]) in the
directions it lets an edit write to, for the relative threshold (seqedit's default, 1e-2·λ_max)
and the original absolute one (2e-2).

    python bench/alphaedit_nullspace.py [--model smollm2-135m] [--tokens N]

An edit confined to directions holding a fraction f of the energy still reaches other inputs
through them: AlphaEdit's premise is f ≈ 0. Key statistics: seqedit.stats (cached), default
token budget unless --tokens.
"""
from __future__ import annotations

import argparse

import torch

from seqedit.models import load, spec as model_spec
from seqedit.stats import second_moments

RULES = (("relative 1e-2 (seqedit)", True, 1e-2), ("absolute 2e-2 (original)", False, 2e-2))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, tok = load(args.model)
    spec = model_spec(model)
    layers = spec.default_edit_layers()
    options = {} if args.tokens is None else {"max_tokens": args.tokens}
    stats = second_moments(model, tok, layers, progress=False, **options)
    print(f"{args.model}, d_in = {spec.mlp_hidden_size}, key statistics over "
          f"{stats[layers[0]][1]} tokens")
    print(f"{'layer':>5} {'κ(C)':>7} " + " ".join(f"{name + ': dims, energy':>38}" for name, _, _ in RULES))
    for layer in layers:
        ev = torch.linalg.eigvalsh(stats[layer][0].double())
        top, total = float(ev.max()), float(ev.sum())
        cells = []
        for _, relative, threshold in RULES:
            null = ev < (threshold * top if relative else threshold)
            cells.append(f"{int(null.sum()):>24} {float(ev[null].sum()) / total:>12.1%}")
        print(f"{layer:>5} {top / float(ev.min()):>7.0f} " + " ".join(cells))


if __name__ == "__main__":
    main()
