"""What a step checks before anything moves, and the one fused weight update it then makes."""
from __future__ import annotations

from typing import Any

import torch

from .. import ops
from ..data import EditRequest, Problem, RequestValidationError, validate
from ..editors.base import Delta
from .hashing import request_key
from .ledger import Ledger

_SANE_CONTEXT = 1 << 22  # tokenizers say ~1e30 when they do not know their context length


def as_requests(requests: Any) -> list[EditRequest]:
    if isinstance(requests, (EditRequest, dict)):
        requests = [requests]
    return [EditRequest.from_dict(r) if isinstance(r, dict) else r for r in requests]


def validate_requests(requests: list[EditRequest], tokenizer: Any, spec: Any,
                      ledger: Ledger) -> None:
    """`seqedit.data.validate` plus one rule only the ledger can check; raises one
    RequestValidationError naming every problem."""
    limit = spec.max_positions or getattr(tokenizer, "model_max_length", None)
    usable = isinstance(limit, int) and 0 < limit <= _SANE_CONTEXT
    validate(requests, tokenizer=tokenizer if usable else None,
             max_length=limit if usable else None)
    # A case_id names one fact: reusing a live one with other content would be a second,
    # conflicting edit of "the same" case — most likely an input file changed between runs.
    live = {str(cid): (e.edit_id, key) for e in ledger.live_entries()
            for cid, key in zip(e.case_ids, e.request_keys) if cid is not None}
    problems = []
    for i, req in enumerate(requests):
        hit = live.get(str(req.case_id)) if req.case_id is not None else None
        if hit is not None and hit[1] != request_key(req):
            problems.append(Problem(i, req.case_id, "case_id", (
                f"edit {hit[0]} in the ledger applied case_id {req.case_id!r} with different "
                "content; roll it back first or give this request another case_id")))
    if problems:
        raise RequestValidationError(problems, total=len(requests))


def split_done(requests: list[EditRequest], ledger: Ledger) -> tuple[list[int], dict[int, int]]:
    """(indices still to edit, {index: edit_id that already processed it}).

    Matching counts occurrences, so the n-th copy of a request given several times is done
    only if the ledger processed it at least n times.
    """
    todo, done, seen = [], {}, {}
    for i, req in enumerate(requests):
        key = request_key(req)
        nth = seen[key] = seen.get(key, -1) + 1
        earlier = ledger.processed(key)
        if nth < len(earlier):
            done[i] = earlier[nth]
        else:
            todo.append(i)
    return todo, done


def check_structure(model: torch.nn.Module, method: str, delta: Any) -> None:
    """A malformed delta is an editor bug, not a refusal: raise before anything moves."""
    if not isinstance(delta, Delta):
        raise TypeError(f"editor {method!r} returned {type(delta).__name__}, not a Delta")
    names = [d.name for d in delta.layers]
    if len(set(names)) != len(names):
        raise ValueError(f"editor {method!r} returned a delta naming a weight twice: {names}")
    for d in delta.layers:
        try:
            shape = tuple(model.get_parameter(d.name).shape)
        except AttributeError:
            raise ValueError(f"editor {method!r} returned a delta for {d.name!r}, which this "
                             "model does not have") from None
        want = shape[::-1] if d.transposed else shape
        if len(shape) != 2 or (d.u.shape[0], d.v.shape[0]) != want:
            raise ValueError(f"delta for {d.name}: u{tuple(d.u.shape)} v{tuple(d.v.shape)} do not "
                             f"fit the weight {shape} (transposed={d.transposed})")


def refusal(delta: Delta) -> str | None:
    """Why a well-formed delta must not be applied, or None. An edit that would change nothing
    is refused too: reporting it as applied is the silent no-op users hit elsewhere."""
    if not delta.layers:
        return "the editor returned an empty delta (it would change nothing)"
    reason = delta.non_finite_reason()
    if reason is not None:
        return reason
    # ‖U Vᵀ‖²_F = Σ (UᵀU ∘ VᵀV), from the factors alone.
    if all(float(((d.u.double().T @ d.u.double()) * (d.v.double().T @ d.v.double())).sum()) == 0.0
           for d in delta.layers):
        return "the editor returned a zero delta (it would change nothing)"
    return None


def apply_delta(model: torch.nn.Module, delta: Delta, alpha: float) -> dict[str, dict[str, float]]:
    """W += α·U Vᵀ for every layer of `delta` in one fused call; returns per weight the damage
    monitors Σ|W| (after), Σ|ΔW| and ‖ΔW‖²_F from the same pass."""
    params = [model.get_parameter(d.name) for d in delta.layers]
    with torch.no_grad():
        stats = ops.rank_update_list_(
            [p.data for p in params],
            [d.u.to(p.device, torch.float32) for d, p in zip(delta.layers, params)],
            [d.v.to(p.device, torch.float32) for d, p in zip(delta.layers, params)],
            alpha, transposed=[d.transposed for d in delta.layers], stats=True)
    return {d.name: {"abs_sum_w": s.abs_sum_w, "abs_sum_delta": s.abs_sum_delta,
                     "delta_fro_sq": s.delta_fro_sq} for d, s in zip(delta.layers, stats)}
