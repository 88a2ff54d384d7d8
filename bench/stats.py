"""Key statistics: seqedit's one-pass collection vs the per-layer passes existing tools make.

    python bench/stats.py                  # SmolLM2-135M, default edit layers, 20k tokens
    python bench/stats.py --quick          # tiny random Llama, seconds
    python bench/stats.py --default-budget # also time the library default budget (ours only)

Both sides see the same tokens in the same batches. The baseline does what EasyEdit's
`layer_stats` does per layer: a forward that stops right after that layer's MLP output projection
(exception from a hook), the masked keys cast to float64 (the function's default precision; its
YAML configs use float32) and `acc += k.T @ k`, once per layer. Ours: `seqedit.stats.second_moments`
(one pass stopping before the deepest projection, fused `second_moment_list_` into float64),
without cache so its planning and tokenization are timed too. Timings are best-of-`--repeat`
wall clock; on a shared CPU expect ±20% noise.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from seqedit.models import load, spec as model_spec, tiny
from seqedit.stats import DEFAULT_MAX_TOKENS, second_moments
from seqedit.stats.cache import tokenizer_fingerprint, weight_fingerprints
from seqedit.stats.corpus import content_hash, pack, resolve, select


class _Stop(Exception):
    pass


def baseline(model, layers, batches):
    """One pass per layer, float64 `acc += k.T @ k` — the existing tools' way, written for this bench.

    It gets the tokenized, packed batches for free (ours is timed with its tokenization)."""
    spec = model_spec(model)
    out = {}
    for layer in layers:
        d = spec.mlp_hidden_size
        acc, count, box = torch.zeros(d, d, dtype=torch.float64), 0, {}

        def hook(module, args, output):
            box["x"] = args[0]
            raise _Stop

        handle = spec.mlp_out(model, layer).register_forward_hook(hook)
        try:
            with torch.no_grad():
                for batch in batches:
                    ids, mask = batch.inputs()
                    try:
                        model(input_ids=ids, attention_mask=mask, use_cache=False)
                    except _Stop:
                        pass
                    k = box.pop("x")[mask.bool()].to(torch.float64)
                    acc += k.T @ k
                    count += k.shape[0]
        finally:
            handle.remove()
        out[layer] = (acc / count, count)
    return out


def timed(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random Llama instead of SmolLM2-135M")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=None, help="token budget (default 20k; 4k with --quick)")
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=None, help="best of N (default 1; 3 with --quick)")
    ap.add_argument("--default-budget", action="store_true", help=f"also time ours at max_tokens={DEFAULT_MAX_TOKENS}")
    args = ap.parse_args()

    if args.quick:
        model, tok = tiny("llama", seed=0)
    else:
        model, tok = load(args.model)
    spec = model_spec(model)
    layers = spec.default_edit_layers()
    budget = args.tokens or (4_000 if args.quick else 20_000)
    repeat = args.repeat or (3 if args.quick else 1)
    max_length = args.max_length or min(spec.max_positions or 1024, 1024)
    docs = resolve(None)
    common = dict(max_tokens=budget, max_length=max_length, batch_tokens=args.batch_tokens)

    t_fp0 = time.perf_counter()
    weight_fingerprints(model, spec, layers)
    t_fp1 = time.perf_counter()
    tokenizer_fingerprint(tok), content_hash(docs)
    t_fp2 = time.perf_counter()

    best_ours, med_ours, ours = timed(
        lambda: second_moments(model, tok, layers, corpus=docs, cache=False, progress=False, **common), repeat)
    batches = pack(select(docs, tok, budget, max_length), args.batch_tokens)
    best_base, med_base, base = timed(lambda: baseline(model, layers, batches), repeat)
    worst = max(float(((ours[i][0] - base[i][0]).norm() / base[i][0].norm())) for i in layers)
    count = ours[layers[0]][1]

    name = "tiny llama" if args.quick else args.model
    print(f"\n{name}, layers {layers}, {count} tokens, max_length {max_length}, batch_tokens "
          f"{args.batch_tokens}, {torch.get_num_threads()} threads, dtype {spec.mlp_out(model, layers[0]).weight.dtype}")
    print("| method | forward passes | time (best / median) | tokens/s | speed-up |")
    print("|---|---|---|---|---|")
    print(f"| per-layer passes, float64 `acc += k.T @ k` (EasyEdit-style) | {len(layers)} | "
          f"{best_base:.2f} s / {med_base:.2f} s | {count / best_base:,.0f} | 1.0x |")
    print(f"| seqedit one pass, fused `second_moment_list_` | 1 | {best_ours:.2f} s / {med_ours:.2f} s | "
          f"{count / best_ours:,.0f} | {best_base / best_ours:.1f}x |")
    print(f"\nmax relative Frobenius difference ours vs baseline: {worst:.1e}")
    print(f"cache-key cost: weights up to layer {max(layers)} {t_fp1 - t_fp0:.2f} s, "
          f"tokenizer + corpus {t_fp2 - t_fp1:.2f} s")

    if args.default_budget:
        t0 = time.perf_counter()
        r = second_moments(model, tok, layers, corpus=docs, max_tokens=DEFAULT_MAX_TOKENS, max_length=max_length,
                           batch_tokens=args.batch_tokens, cache=False, progress=False)
        dt = time.perf_counter() - t0
        n = r[layers[0]][1]
        print(f"default budget: {n} tokens in {dt:.1f} s ({n / dt:,.0f} tokens/s), ours, no cache")


if __name__ == "__main__":
    main()
