"""safetensors bytes that depend only on what is stored.

safetensors writes the `__metadata__` entries in the order of a Rust hash map, which is seeded
per process, so the same tensors and metadata gave different bytes (and sha256s in a ledger) in
two processes. Here the entries are put in sorted order; the header keeps its length, so the
data offsets and everything after the header are untouched.
"""
from __future__ import annotations

import json

import safetensors.torch
import torch


def _dumps(entries: dict[str, str]) -> bytes:
    return json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()


def save(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    blob = safetensors.torch.save(tensors, metadata=metadata)
    size = int.from_bytes(blob[:8], "little")
    header = blob[8:8 + size]
    written = json.loads(header)["__metadata__"]  # in the order the file has them
    old, new = _dumps(written), _dumps(dict(sorted(written.items())))
    if header.count(old) != 1 or len(old) != len(new):  # not the layout this module knows
        raise RuntimeError("safetensors wrote a header seqedit cannot put in canonical order "
                           f"(safetensors {getattr(safetensors, '__version__', '?')})")
    return blob[:8] + header.replace(old, new) + blob[8 + size:]
