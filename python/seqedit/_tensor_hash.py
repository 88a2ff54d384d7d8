"""Feeding tensors into hashlib digests, the one way every stored tensor digest is computed
(session base-weight fingerprints, stats cache keys and file checksums).

The bytes hashed are the tensor's elements in row-major (logical) order in its own dtype, on the
CPU: independent of strides, device and storage offset. Digests are stored in ledgers and cache
files and compared in later processes, so nothing here may change what is fed.
"""
from __future__ import annotations

from typing import Any

import torch


def named_header(name: str, tensor: torch.Tensor) -> str:
    """`name|dtype|shape`, the header the statistics cache puts before each tensor's bytes."""
    return f"{name}|{tensor.dtype}|{tuple(tensor.shape)}"


def update(digest: Any, tensor: torch.Tensor, header: str) -> None:
    """Feed `header` (UTF-8) and then the exact bytes of `tensor` into the hashlib object
    `digest`. The header makes equal bytes under another name, dtype or shape hash differently."""
    if tensor.device.type == "meta":
        raise ValueError(f"cannot hash {header}: it is on the meta device (not materialized)")
    digest.update(header.encode())
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    if data.numel():
        digest.update(memoryview(data.view(torch.uint8).numpy()))
