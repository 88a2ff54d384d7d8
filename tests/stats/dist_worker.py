"""One rank of the distributed test (run in a forked child by test_distributed.py)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from stats_helpers import make_corpus

from seqedit.models import tiny
from seqedit.stats import second_moments

KW = {"max_tokens": 900, "max_length": 64, "batch_tokens": 128, "progress": False}
LAYERS = [0, 2]


def run(rank: int, world: int, port: str, out: str, cache_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, tok = tiny("llama", seed=0)
        result = second_moments(model, tok, LAYERS, corpus=make_corpus(), cache_dir=cache_dir, **KW)
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
