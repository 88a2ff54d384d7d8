"""One rank of the distributed tests (run in a forked child by test_distributed.py)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from stats_helpers import make_corpus

from seqedit.models import tiny
from seqedit.stats import second_moments

KW = {"max_tokens": 900, "max_length": 64, "batch_tokens": 128, "progress": False}
LAYERS = [0, 2]


def run(rank: int, world: int, port: str, out: str, cache_dir: str, seed: int = 0) -> None:
    """Saves the result to OUT/rank<r>.pt, or the error message to OUT/rank<r>.err."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, tok = tiny("llama", seed=seed)
        result = second_moments(model, tok, LAYERS, corpus=make_corpus(), cache_dir=cache_dir, **KW)
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    except RuntimeError as e:
        with open(os.path.join(out, f"rank{rank}.err"), "w") as f:
            f.write(str(e))
    finally:
        dist.destroy_process_group()
