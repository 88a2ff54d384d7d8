"""Stored safetensors files are a function of what they hold: safetensors orders the metadata
by a per-process random hash map, so two identical runs wrote different delta bytes (and ledger
checksums)."""
from __future__ import annotations

import subprocess
import sys

import safetensors.torch
import torch

from seqedit import _safetensors_bytes

SCRIPT = """
import sys, torch
from seqedit._safetensors_bytes import save
g = torch.Generator().manual_seed(3)
t = {"delta.w.u": torch.randn(7, 3, generator=g), "keys.w": torch.randn(5, 2, generator=g).double()}
meta = {"format": "seqedit-delta", "edit_id": "12", "method": "memit", "z": "ü"}
sys.stdout.buffer.write(save(t, meta))
"""


def test_the_same_content_gives_the_same_bytes_in_every_process():
    blobs = {subprocess.run([sys.executable, "-c", SCRIPT], check=True, capture_output=True).stdout
             for _ in range(4)}
    assert len(blobs) == 1
    blob = blobs.pop()
    tensors = safetensors.torch.load(blob)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(tensors["delta.w.u"], torch.randn(7, 3, generator=g))
    assert torch.equal(tensors["keys.w"], torch.randn(5, 2, generator=g).double())
    # The metadata is intact and now in sorted order.
    size = int.from_bytes(blob[:8], "little")
    assert b'"__metadata__":{"edit_id":"12","format":"seqedit-delta","method":"memit","z":"' in blob[8:8 + size]


def test_repeated_saves_in_one_process_agree_and_read_back(tmp_path):
    t = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64)}
    meta = {f"k{i}": str(i) for i in range(8)}
    blobs = {_safetensors_bytes.save(t, meta) for _ in range(20)}
    assert len(blobs) == 1
    (tmp_path / "x.safetensors").write_bytes(blobs.pop())
    with safetensors.safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert f.metadata() == meta
        assert all(torch.equal(f.get_tensor(k), t[k]) for k in t)
