"""`second_moments`: cache lookup, planning, resumable accumulation, cross-rank reduction."""
from __future__ import annotations

import json
import operator
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.distributed as dist
from .._progress import Progress

from . import cache as cache_io
from . import corpus as corpus_io
from .collect import accumulate
from .resume import Checkpoint

DEFAULT_MAX_TOKENS = 100_000
DEFAULT_MAX_LENGTH = 1024
DEFAULT_BATCH_TOKENS = 4096
DEFAULT_CHECKPOINT_SECONDS = 300.0


def second_moments(
    model: torch.nn.Module,
    tokenizer: Any,
    layers: Iterable[int],
    *,
    corpus: Any = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_length: int | None = None,
    batch_tokens: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    cache: bool = True,
    checkpoint_every: float | None = DEFAULT_CHECKPOINT_SECONDS,
) -> dict[int, tuple[torch.Tensor, int]]:
    """C = E[k kᵀ] of the keys (inputs of the MLP output projection) of each layer in `layers`.

    Returns `{layer: (C, count)}` with C float64 [d_in, d_in] on CPU and `count` the number of
    tokens. All layers come from one forward pass per batch that stops after the deepest layer.

    corpus: None (the packaged `seqedit.data.corpus("wikipedia_vital")`), a list of strings, a
      path to a .txt (a document per line) / .jsonl / .json file (optionally .gz), or the name of
      a packaged corpus.
    max_tokens: exact token budget. The 100k default keeps CPU runs short (SmolLM2-135M, layers
      4-8: ~5 CPU-minutes on one core) and gives ~65 tokens per dimension for d_in = 1536; raise it
      on a GPU or for wider models. Fewer only if the corpus runs out (warned).
    max_length: documents are truncated to this many tokens; default min(model context, 1024).
    batch_tokens: bound on padded tokens (rows x longest row) per forward; default max(4096,
      max_length).
    cache_dir: where results and checkpoints live; default $SEQEDIT_CACHE/stats
      (~/.cache/seqedit/stats). `cache=False` neither reads nor writes anything.
    checkpoint_every: seconds between checkpoints of a running pass (0: after every batch, None:
      never); an interrupted call resumes from its last checkpoint and gets the same result.

    Under torch.distributed each rank takes every world_size-th batch; sums are all-reduced in
    float64, every rank gets the result and rank 0 writes the cache.
    """
    from seqedit.models import spec as model_spec

    spec = model_spec(model)
    layers = _check_layers(layers, spec.num_layers)
    if max_length is None:
        max_length = min(spec.max_positions or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
    if batch_tokens is None:
        batch_tokens = max(DEFAULT_BATCH_TOKENS, max_length)
    _check_positive(max_tokens=max_tokens, max_length=max_length, batch_tokens=batch_tokens)
    if batch_tokens < max_length:
        raise ValueError(f"batch_tokens ({batch_tokens}) must be at least max_length ({max_length})")
    docs = corpus_io.resolve(corpus)
    rank, world = _rank_world()
    run = _Run(max_tokens, max_length, batch_tokens, cache,
               Path(cache_dir) if cache_dir is not None else cache_io.default_dir(),
               progress, checkpoint_every, rank, world)

    # Fingerprinting hashes every weight below the deepest layer (~0.2-0.5 s for a 135M model):
    # skipped when nothing is cached and there are no other ranks to check against.
    if cache or world > 1:
        keys = _layer_keys(model, tokenizer, spec, layers, docs, max_tokens, max_length)
    else:
        keys = {i: "" for i in layers}
    paths = {i: run.root / f"{spec.arch}-layer{i}-{cache_io.sha(keys[i])[:24]}.safetensors" for i in layers}
    found: dict[int, dict[str, torch.Tensor]] = {}
    if cache:
        for i in layers:
            tensors = cache_io.read(paths[i], keys[i])
            if tensors is not None and _valid_result(tensors, spec.mlp_hidden_size):
                found[i] = tensors
    missing = [i for i in layers if i not in found]
    if world > 1:
        missing = _agree(keys, layers, missing)

    if missing:
        sums, count = _compute(model, tokenizer, spec, missing, docs, keys, run)
        for i in missing:
            found[i] = {"sum": sums[i], "count": torch.tensor([count])}
            if cache and rank == 0:
                cache_io.write(paths[i], found[i], keys[i])
    return {i: (found[i]["sum"] / int(found[i]["count"]), int(found[i]["count"])) for i in layers}


@dataclass(frozen=True)
class _Run:
    max_tokens: int
    max_length: int
    batch_tokens: int
    cache: bool
    root: Path
    progress: bool
    checkpoint_every: float | None
    rank: int
    world: int


def _compute(model, tokenizer, spec, layers, docs, keys, run: _Run) -> tuple[dict[int, torch.Tensor], int]:
    """Σ kkᵀ (float64, CPU) of `layers` over the planned tokens, and the token count."""
    selected = corpus_io.select(docs, tokenizer, run.max_tokens, run.max_length)
    total = sum(len(d) for d in selected)
    if total < run.max_tokens:
        warnings.warn(f"seqedit.stats: the corpus has only {total} tokens, fewer than max_tokens={run.max_tokens}",
                      stacklevel=3)
    # Round-robin over the length-sorted batches gives every rank a similar share of the work.
    mine = corpus_io.pack(selected, run.batch_tokens)[run.rank::run.world]
    modules = {i: spec.mlp_out(model, i) for i in layers}
    d = spec.mlp_hidden_size
    sums = {i: torch.zeros(d, d, dtype=torch.float64, device=next(modules[i].parameters()).device)
            for i in layers}

    # A checkpoint belongs to one plan and one shard: batch size, rank and world size are in its key.
    run_key = json.dumps({"layers": {str(i): keys[i] for i in layers}, "batch_tokens": run.batch_tokens,
                          "rank": run.rank, "world": run.world}, sort_keys=True)
    checkpoint = Checkpoint(run.root / f"{spec.arch}-partial-{cache_io.sha(run_key)[:24]}.safetensors",
                            run_key, run.checkpoint_every, run.cache)
    done, tokens = checkpoint.load(sums, mine)
    bar = Progress(sum(b.tokens for b in mine), initial=tokens, unit="tok", unit_scale=True,
                   desc=f"key statistics, layers {layers}" + (f", rank 0 of {run.world}" if run.world > 1 else ""),
                   enabled=run.progress and run.rank == 0)
    state = {"done": done, "tokens": tokens}

    def on_batch(n: int) -> None:
        state["done"] += 1
        state["tokens"] += n
        bar.update(n)
        checkpoint.maybe_save(sums, state["done"], state["tokens"], len(mine))

    try:
        accumulate(model, modules, mine[done:], sums, on_batch)
    finally:
        bar.close()
    sums, count = {i: s.cpu() for i, s in sums.items()}, state["tokens"]
    if run.world > 1:
        sums, count = _all_reduce(sums, count)
    if count != total:
        raise RuntimeError(f"seqedit.stats: accumulated {count} tokens but the plan has {total}")
    checkpoint.discard()
    return sums, count


def _layer_keys(model, tokenizer, spec, layers, docs, max_tokens, max_length) -> dict[int, str]:
    weights = cache_io.weight_fingerprints(model, spec, layers)
    shared = {
        "format": cache_io.FORMAT_VERSION,
        "tokenizer": cache_io.tokenizer_fingerprint(tokenizer),
        "corpus": corpus_io.content_hash(docs),
        "max_tokens": max_tokens,
        "max_length": max_length,
        "dtype": str(spec.mlp_out(model, max(layers)).weight.dtype),
    }
    return {i: json.dumps({**shared, "layer": i, "weights": weights[i]}, sort_keys=True) for i in layers}


def _valid_result(tensors: dict[str, torch.Tensor], d: int) -> bool:
    s, c = tensors.get("sum"), tensors.get("count")
    ok = s is not None and c is not None and s.shape == (d, d) and s.dtype == torch.float64 and c.numel() == 1
    if not ok:
        warnings.warn("seqedit.stats: cache file has unexpected contents; recomputing", cache_io.StatsCacheWarning,
                      stacklevel=3)
    return ok


def _check_layers(layers: Iterable[int], num_layers: int) -> list[int]:
    if isinstance(layers, int):
        layers = [layers]
    try:
        out = sorted({operator.index(i) for i in layers})
    except TypeError:
        raise TypeError(f"layers must be integers, got {layers!r}") from None
    if not out:
        raise ValueError("layers is empty")
    bad = [i for i in out if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{num_layers - 1}")
    return out


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


# ---------------------------------------------------------------------------------------------
# torch.distributed


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree(keys: dict[int, str], layers: list[int], missing: list[int]) -> list[int]:
    """Check every rank has the same model/corpus/settings; compute what any rank lacks."""
    dev = _comm_device()
    digest = bytes.fromhex(cache_io.sha([keys[i] for i in layers]))
    local = torch.tensor(list(digest) + [int(i in missing) for i in layers], dtype=torch.int64, device=dev)
    hi, lo = local.clone(), local.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    if not torch.equal(hi[:32], lo[:32]):
        raise RuntimeError("seqedit.stats: ranks disagree on the model, tokenizer, corpus or settings")
    return [i for i, flag in zip(layers, hi[32:].tolist()) if flag]


def _all_reduce(sums: dict[int, torch.Tensor], count: int) -> tuple[dict[int, torch.Tensor], int]:
    dev = _comm_device()
    out = {}
    for i, s in sums.items():
        t = s.to(dev)
        dist.all_reduce(t)
        out[i] = t.cpu()
    n = torch.tensor([count], dtype=torch.int64, device=dev)
    dist.all_reduce(n)
    return out, int(n)
