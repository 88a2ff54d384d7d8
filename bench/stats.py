"""Key statistics: seqedit's one-pass collection vs the per-layer passes existing tools make.

    python bench/stats.py                  # SmolLM2-135M, default edit layers, 20k tokens
    python bench/stats.py --quick          # tiny random Llama, seconds
    python bench/stats.py --default-budget # also time the library default budget (ours only)
    python bench/stats.py --threads 1      # one intra-op thread (steadier on a shared machine)

Both sides see the same tokens in the same batches. The baseline does what EasyEdit's
`layer_stats` does per layer: a forward that stops right after that layer's MLP output projection
(exception from a hook), the masked keys cast to float64 (the function's default precision; its
YAML configs use float32) and `acc += k.T @ k`, once per layer. Ours: `seqedit.stats.second_moments`
(one pass stopping before the deepest projection, fused `second_moment_list_` into float64),
without cache so its planning and tokenization are timed too. The two run interleaved
`--repeat` times; the table gives best wall time and best process CPU time — on a shared machine
the CPU-time ratio is the steadier one (wall time moves with other processes' load).
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


def timed_pair(fns, repeat):
    """Run the functions interleaved `repeat` times (so both see the same background load);
    per function: best wall time, best process CPU time (robust to other processes on a shared
    machine), median wall time, last result."""
    walls, cpus, results = [[] for _ in fns], [[] for _ in fns], [None] * len(fns)
    for _ in range(repeat):
        for j, fn in enumerate(fns):
            w0, c0 = time.perf_counter(), time.process_time()
            results[j] = fn()
            walls[j].append(time.perf_counter() - w0)
            cpus[j].append(time.process_time() - c0)
    return [(min(w), min(c), statistics.median(w), r) for w, c, r in zip(walls, cpus, results)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random Llama instead of SmolLM2-135M")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=None, help="token budget (default 20k; 4k with --quick)")
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=None, help="best of N (default 1; 3 with --quick)")
    ap.add_argument("--default-budget", action="store_true", help=f"also time ours at max_tokens={DEFAULT_MAX_TOKENS}")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

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

    batches = pack(select(docs, tok, budget, max_length), args.batch_tokens)
    padded = sum(b.inputs()[0].numel() for b in batches)
    (w_ours, c_ours, m_ours, ours), (w_base, c_base, m_base, base) = timed_pair([
        lambda: second_moments(model, tok, layers, corpus=docs, cache=False, progress=False, **common),
        lambda: baseline(model, layers, batches),
    ], repeat)
    worst = max(float((ours[i][0] - base[i][0]).norm() / base[i][0].norm()) for i in layers)
    count = ours[layers[0]][1]

    name = "tiny llama" if args.quick else args.model
    print(f"\n{name}, layers {layers}, {count} tokens ({padded} with padding, {len(batches)} batches), "
          f"max_length {max_length}, batch_tokens {args.batch_tokens}, {torch.get_num_threads()} threads, "
          f"dtype {spec.mlp_out(model, layers[0]).weight.dtype}")
    print("| method | forward passes | wall best / median | CPU time | tokens/s (wall) | tokens/s (CPU) "
          "| speed-up wall / CPU |")
    print("|---|---|---|---|---|---|---|")
    print(f"| per-layer passes, float64 `acc += k.T @ k` (EasyEdit-style) | {len(layers)} | "
          f"{w_base:.2f} s / {m_base:.2f} s | {c_base:.2f} s | {count / w_base:,.0f} | {count / c_base:,.0f} "
          "| 1.0x / 1.0x |")
    print(f"| seqedit one pass, fused `second_moment_list_` | 1 | {w_ours:.2f} s / {m_ours:.2f} s | {c_ours:.2f} s | "
          f"{count / w_ours:,.0f} | {count / c_ours:,.0f} | {w_base / w_ours:.1f}x / {c_base / c_ours:.1f}x |")
    print(f"\nmax relative Frobenius difference ours vs baseline: {worst:.1e}")
    print(f"cache-key cost: weights up to layer {max(layers)} {t_fp1 - t_fp0:.2f} s, "
          f"tokenizer + corpus {t_fp2 - t_fp1:.2f} s")

    if args.default_budget:
        t0, c0 = time.perf_counter(), time.process_time()
        r = second_moments(model, tok, layers, corpus=docs, max_tokens=DEFAULT_MAX_TOKENS, max_length=max_length,
                           batch_tokens=args.batch_tokens, cache=False, progress=False)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        n = r[layers[0]][1]
        print(f"default budget (ours, no cache): {n} tokens in {dt:.1f} s wall ({n / dt:,.0f} tokens/s), "
              f"{dc:.1f} s CPU")


if __name__ == "__main__":
    main()
