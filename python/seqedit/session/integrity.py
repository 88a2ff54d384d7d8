"""Checksums that make a session directory's history tamper-evident, and the base model's identity.

- The manifest carries `checksum`: sha256 of its canonical JSON without that field. A changed
  config, seed or fingerprint no longer matches.
- Every ledger line carries `chain`: sha256(previous line's chain + the line's canonical JSON
  without `chain`); the first line chains from sha256(manifest `session_id`). A changed, deleted,
  inserted or reordered line breaks the chain at that line; a line taken from another session
  breaks it at once. Dropping whole lines from the *end* cannot be told from a crash before they
  committed, and someone who recomputes every checksum is not stopped: these detect accidents and
  hand edits, they are not signatures.
- `model_fingerprint`: the sha256 of every parameter and buffer's exact bytes, so that a model
  that differs anywhere from the base model (which changes every key an edit is computed from)
  is refused on resume, not only one whose edited weights differ.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch

from .hashing import canonical_json, tensor_fingerprint


def seal_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return {**body, "checksum": _sha(canonical_json(body))}


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """Why the manifest's checksum does not hold, or None."""
    if "checksum" not in manifest:
        return "it has no checksum"
    if seal_manifest(manifest)["checksum"] != manifest["checksum"]:
        return "its checksum does not match its content (it was changed after it was written)"
    return None


def chain_root(manifest: dict[str, Any]) -> str:
    return _sha(str(manifest.get("session_id", "")))


def seal_line(record: dict[str, Any], previous: str) -> dict[str, Any]:
    body = {k: v for k, v in record.items() if k != "chain"}
    return {**body, "chain": _sha(previous + canonical_json(body))}


def line_problem(record: dict[str, Any], previous: str) -> str | None:
    """Why `record` does not follow the line whose chain is `previous`, or None."""
    if "chain" not in record:
        return "it has no chain checksum"
    if seal_line(record, previous)["chain"] != record["chain"]:
        return ("its chain checksum does not match (this line, or one before it, was changed, "
                "removed, inserted or reordered)")
    return None


def follow(head: str, record: dict[str, Any], raw: bytes, *, legacy: bool) -> str:
    """The chain value after `record` (whose bytes in the file are `raw`), which must follow
    `head`; raises ValueError naming the problem. Lines of a format-1 ledger (`legacy`) have no
    chain: the value then advances over their bytes, so lines appended later still chain to
    everything before them."""
    if legacy and "chain" not in record:
        return hashlib.sha256(head.encode() + raw).hexdigest()
    problem = line_problem(record, head)
    if problem:
        raise ValueError(problem)
    return record["chain"]


def model_fingerprint(model: torch.nn.Module) -> dict[str, str]:
    """name → sha256 (first 32 hex digits) of every parameter and buffer, shared ones once.
    Hashing runs at memory speed (bench/RESULTS.md gives the cost)."""
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    return {name: tensor_fingerprint(t.detach())["sha256"][:32] for name, t in sorted(tensors.items())}


def fingerprint_problems(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    out = [f"{name}: not in this model" for name in sorted(set(recorded) - set(now))]
    out += [f"{name}: not in the base model" for name in sorted(set(now) - set(recorded))]
    out += [f"{name}: differs from the base model's" for name in sorted(set(recorded) & set(now))
            if recorded[name] != now[name]]
    return out


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
