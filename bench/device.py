"""Seconds per edit of a whole EditSession on a Llama-3-8B-shaped model: the GPU check that the
guide asks for when a task is lent a device, prepared and dry-run on the CPU.

    python bench/device.py --save-tokenizer .devtok        # on the CPU: SmolLM2's BPE tokenizer
    python bench/device.py --tokenizer .devtok --device cuda --edits 20 --batches 1,10
    python bench/device.py --shape tiny --device cpu --edits 4   # dry run of the same code, seconds

On a lent GPU machine, as one `run` call carrying .devtok (the CUDA build, the kernel check, then
this; ≈ 16 GiB of bf16 weights. Nothing of seqedit has run on a GPU yet: expect it to find
problems, and keep the first call short):
    SEQEDIT_CUDA=ON pip install -q --no-build-isolation --no-deps . && \
      python csrc/cuda/gpu_check.py && \
      python bench/device.py --tokenizer .devtok --edits 20 --batches 1,10 --out $OUT/device.jsonl

The model is a randomly initialised `LlamaForCausalLM` of Llama-3-8B's shape (32 layers, hidden
4096, MLP 14336, 32 heads / 8 KV heads, vocab 128256, bf16; no weights can be fetched), built
directly on the device. Random weights make the value optimisation run all its steps (the target
never leads early), so s/edit is the upper end of what a trained model costs; efficacy means
nothing here and is not printed. The tokenizer is SmolLM2's BPE (saved from the packaged model
with --save-tokenizer and carried to the device, where that package is not installed): English
token counts close to Llama-3's; without it the byte tokenizer makes sequences ~4x longer.

Per batch size: one EditSession (MEMIT defaults, layers 4-8, key statistics over --stats-tokens
tokens of the packaged Wikipedia corpus, no evaluators), the first --edits CounterFact edit records
in steps of that size. Printed: the key-statistics time, then per batch size one JSON line with the
medians over the steps of the ledger's timings per request (compute = keys, value optimisation and
solve; apply = the fused rank update; total = the whole step with its probes), the session's
opening time (it fingerprints every weight), value-optimisation steps per request and peak device
memory; the same line is appended to --out if given.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from seqedit import data
from seqedit.models.tiny import _config, byte_tokenizer
from seqedit.session import EditSession

SHAPES = {
    "llama3-8b": dict(hidden_size=4096, num_layers=32, intermediate_size=14336, num_heads=32,
                      num_kv_heads=8, vocab_size=128256, max_positions=8192, rope_theta=500000.0),
    "tiny": dict(hidden_size=96, num_layers=8, intermediate_size=224, num_heads=4, num_kv_heads=2,
                 vocab_size=512, max_positions=512),
}


def build(shape: str, device: torch.device, dtype: torch.dtype):
    """Random model of the shape, made on `device` in `dtype` (no float32 copy on the host)."""
    import transformers

    config = _config("llama", dict(SHAPES[shape]))
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def key_statistics(model, tok, tokens: int, device) -> tuple[dict, float]:
    from seqedit.data import corpus
    from seqedit.models import spec as model_spec
    from seqedit.stats import second_moments

    sync(device)
    start = time.perf_counter()
    stats = second_moments(model, tok, model_spec(model).default_edit_layers(), corpus=corpus(),
                           max_tokens=tokens, cache=False, progress=False)
    sync(device)
    return stats, time.perf_counter() - start


def run(model, tok, requests, batch: int, stats: dict, device) -> dict:
    """One session over `requests` in steps of `batch`; the edited weights are put back after."""
    from seqedit.models import spec as model_spec

    names = [model_spec(model).mlp_out_weight_name(layer) for layer in stats]
    saved = {n: model.get_parameter(n).detach().clone() for n in names}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    session = EditSession(model, tok, "memit", stats=stats)
    opened = time.perf_counter() - start  # includes fingerprinting every weight of the model
    try:
        session.edit(requests, batch_size=batch, progress=False)
        sync(device)
        edits = [r for r in session.records() if r.get("type") == "edit"]
    finally:
        session.close()
        for n, w in saved.items():
            model.get_parameter(n).copy_(w)
    wall = time.perf_counter() - start
    applied = [r for r in edits if r["status"] == "applied"]

    def median_per_request(stage):
        return statistics.median(r["timings"][stage] / len(r["requests"]) for r in applied) if applied else None
    steps = [s for r in applied for s in r["info"].get("steps", [])]
    return {"batch": batch, "requests": len(requests), "steps_applied": len(applied),
            "steps_refused": len(edits) - len(applied), "wall_s": wall, "session_open_s": opened,
            "compute_s_per_edit": median_per_request("compute_s"),
            "total_s_per_edit": median_per_request("total_s"),
            "apply_s_per_edit": median_per_request("apply_s"),
            "value_steps_per_request": statistics.mean(steps) if steps else None,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--tokenizer", help="a saved tokenizer folder (default: the byte tokenizer)")
    ap.add_argument("--save-tokenizer", metavar="DIR",
                    help="only save the packaged SmolLM2 tokenizer to DIR (run on the CPU)")
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--batches", default="1,10")
    ap.add_argument("--stats-tokens", type=int, default=100_000)
    ap.add_argument("--out", help="append one JSON line per run to this file")
    args = ap.parse_args(argv)
    if args.save_tokenizer:
        from seqedit.models import load

        load("smollm2-135m")[1].save_pretrained(args.save_tokenizer)
        print(f"tokenizer saved to {args.save_tokenizer}")
        return
    device = torch.device(args.device)
    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        tok = byte_tokenizer(add_bos=False, model_max_length=SHAPES[args.shape]["max_positions"])
    start = time.perf_counter()
    model = build(args.shape, device, getattr(torch, args.dtype))
    sync(device)
    print(f"# {args.shape} {args.dtype} on {device}: built in {time.perf_counter() - start:.1f} s, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters", flush=True)
    stats, stats_s = key_statistics(model, tok, args.stats_tokens, device)
    print(f"# key statistics, layers {sorted(stats)}, {args.stats_tokens} tokens: {stats_s:.1f} s",
          flush=True)
    requests = data.load("counterfact", limit=args.edits)
    for batch in (int(b) for b in args.batches.split(",")):
        row = {"shape": args.shape, "dtype": args.dtype, "device": str(device),
               "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
               "stats_tokens": args.stats_tokens, "stats_s": stats_s,
               **run(model, tok, requests, batch, stats, device)}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
