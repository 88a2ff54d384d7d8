"""Checkpoints of a running pass, so an interrupted call resumes where it stopped.

The batch plan is a pure function of the inputs, so "the first n batches of this rank's shard"
identifies the work done; the float64 sums are stored bit-exactly, so the resumed run adds the
remaining batches to exactly the numbers an uninterrupted run would have had at that point.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Sequence

import torch

from . import cache as cache_io
from .corpus import Batch


class Checkpoint:
    def __init__(self, path: Path, key: str, every: float | None, enabled: bool):
        self.path, self.key, self.every, self.enabled = path, key, every, enabled
        self._saved_at = time.monotonic()

    def load(self, sums: dict[int, torch.Tensor], batches: Sequence[Batch]) -> tuple[int, int]:
        """Restore `sums` in place; return (batches done, tokens done) — (0, 0) without a checkpoint."""
        state = cache_io.read(self.path, self.key) if self.enabled else None
        if state is None:
            return 0, 0
        prog = state.get("progress")
        done = int(prog[0]) if prog is not None and prog.shape == (2,) else -1
        fits = 0 <= done <= len(batches) and int(prog[1]) == sum(b.tokens for b in batches[:done])
        for i, s in sums.items():
            saved = state.get(f"sum.{i}")
            fits = fits and saved is not None and saved.shape == s.shape and saved.dtype == s.dtype
        if not fits:
            warnings.warn(f"seqedit.stats: ignoring checkpoint {self.path}: it does not fit this run; starting over",
                          cache_io.StatsCacheWarning, stacklevel=3)
            return 0, 0
        for i, s in sums.items():
            s.copy_(state[f"sum.{i}"])
        return done, int(prog[1])

    def maybe_save(self, sums: dict[int, torch.Tensor], done: int, tokens: int, total: int) -> None:
        """Save if `every` seconds passed since the last save (0: always) and work remains."""
        if not self.enabled or self.every is None or done >= total:
            return
        if time.monotonic() - self._saved_at < self.every:
            return
        tensors = {f"sum.{i}": s for i, s in sums.items()}
        tensors["progress"] = torch.tensor([done, tokens])
        cache_io.write(self.path, tensors, self.key)
        self._saved_at = time.monotonic()

    def discard(self) -> None:
        if self.enabled:
            self.path.unlink(missing_ok=True)
