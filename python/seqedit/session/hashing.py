"""Stable identities: of a request, of an editor configuration, of a model's base weights.

Every hash here must give the same answer in another process, on another machine, in another
week: the ledger stores them and `EditSession.resume` compares against them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import torch

from .. import _tensor_hash as tensor_hash


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=True)


def request_key(request: Any) -> str:
    """Content identity of an EditRequest (its `to_dict`, case_id included).

    Content, not case_id alone, so that a request whose text was changed between two runs is
    a different edit and is never mistaken for one already in the ledger.
    """
    return hashlib.sha256(canonical_json(request.to_dict()).encode()).hexdigest()[:32]


def jsonable(value: Any, *, depth: int = 0) -> Any:
    """A JSON-safe rendering of editor config values and `Delta.info` (lossy for big tensors)."""
    if depth > 8:
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth=depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v, depth=depth + 1) for v in items]
    if isinstance(value, torch.Tensor):
        if value.numel() <= 16:
            return value.detach().cpu().tolist()
        return f"Tensor(shape={list(value.shape)}, dtype={value.dtype})"
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    return repr(value)


def config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    # A config's own form where it has one (EditorConfig.to_dict gives what `jsonable` gave
    # before it existed, so recorded hashes still match); user configs may be plain dataclasses.
    own = getattr(config, "to_dict", None)
    rendered = jsonable(own() if callable(own) else config)
    return rendered if isinstance(rendered, dict) else {"value": rendered}


def config_hash(method: str, config: Any, version: str) -> str:
    """Stable hash of (method, editor config, seqedit version); stored on every ledger line."""
    blob = canonical_json({"method": method, "config": config_dict(config), "seqedit": version})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tensor_fingerprint(tensor: torch.Tensor) -> dict[str, Any]:
    """sha256 of a tensor's exact bytes plus its dtype and shape (for readable mismatch errors)."""
    digest = hashlib.sha256()
    # This header layout (no name, shape as a list) predates the shared helper; ledgers store it.
    tensor_hash.update(digest, tensor, f"{tensor.dtype}|{list(tensor.shape)}|")
    return {"sha256": digest.hexdigest(), "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape)}


def fingerprint_mismatch(name: str, recorded: dict[str, Any], tensor: torch.Tensor) -> str | None:
    """Why `tensor` is not the recorded base weight `name`, or None when it is."""
    now = tensor_fingerprint(tensor)
    if now["shape"] != recorded["shape"]:
        return f"{name}: shape {now['shape']}, the ledger recorded {recorded['shape']}"
    if now["dtype"] != recorded["dtype"]:
        return (f"{name}: dtype {now['dtype']}, the ledger recorded {recorded['dtype']} "
                "(load the base model in the dtype the session was started with)")
    if now["sha256"] != recorded["sha256"]:
        return f"{name}: the weights differ from the base weights the session was started from"
    return None
