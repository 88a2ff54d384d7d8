"""What a step checks before anything moves, and the one fused weight update it then makes."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .. import ops
from ..data import EditRequest, Problem, RequestValidationError, validate
from ..editors.base import Delta, LayerDelta
from .hashing import request_key
from .ledger import Ledger

_SANE_CONTEXT = 1 << 22  # tokenizers say ~1e30 when they do not know their context length
# One edit may change a weight by at most this multiple of its base norm. Generous on purpose:
# real-model ROME/MEMIT/AlphaEdit edits are a few percent of W, but on tiny random models (weights
# of std 0.02) sound edits reach 2-3x; an overflowing or runaway solve is orders of magnitude off.
MAX_DELTA_RATIO = 10.0


def check_session_options(seed: Any, max_delta_ratio: Any) -> None:
    """The session's own options, checked before anything is created."""
    problems = []
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(f"seed must be an int, got {seed!r}")
    if (not isinstance(max_delta_ratio, (int, float)) or isinstance(max_delta_ratio, bool)
            or math.isnan(max_delta_ratio) or max_delta_ratio <= 0):
        problems.append("max_delta_ratio must be a number > 0 (math.inf turns the guard off), "
                        f"got {max_delta_ratio!r}")
    if problems:
        raise ValueError("EditSession: " + "; ".join(problems))


def check_editor(editor: Any, spec: Any) -> None:
    """`method` given as an object must be an Editor (`seqedit.editors.base.Editor`) whose
    `layers` are layers of this model: the session fingerprints them before the first edit."""
    from ..editors import EDITORS
    from ..editors.config import check_layers

    missing = [a for a in ("name", "config", "layers", "compute", "commit", "revert")
               if not hasattr(editor, a)]
    if missing:
        raise TypeError(f"method must be an editor name ({', '.join(sorted(EDITORS))}) or an "
                        f"Editor instance; got {editor!r} (it has no {', '.join(missing)})")
    layers, what = editor.layers, f"{type(editor).__name__}.layers"
    if not isinstance(layers, (list, tuple)):
        problems = [f"{what} must be a list of layer indices, got {type(layers).__name__} "
                    f"{layers!r:.80}"]
    else:
        problems = list(check_layers(list(layers), spec, what))
        if not problems and list(layers) != sorted(layers):
            problems.append(f"{what} must be sorted, got {list(layers)}")
    if problems:
        raise ValueError("; ".join(problems) + " (an Editor declares the layers it edits)")


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


def refusal(delta: Delta, model: torch.nn.Module, base_norm: Callable[[str], float], *,
            max_delta_ratio: float) -> str | None:
    """Why a well-formed delta must not be applied, or None. Nothing here changes a weight.

    Refused: an empty, zero or non-finite delta (an edit that changes nothing reported as
    applied is the silent no-op users hit elsewhere); one whose result would not be finite in
    the weight's dtype (fp16 tops out at 65504); one with ‖ΔW‖_F > max_delta_ratio · ‖W₀‖_F for
    some weight (a degenerate solve, not an edit).
    """
    if not delta.layers:
        return "the editor returned an empty delta (it would change nothing)"
    reason = delta.non_finite_reason()
    if reason is not None:
        return reason
    norms = {}
    for d in delta.layers:
        # ‖U Vᵀ‖²_F = Σ (UᵀU ∘ VᵀV), from the factors alone.
        u, v = d.u.double(), d.v.double()
        norms[d.name] = math.sqrt(max(float(((u.T @ u) * (v.T @ v)).sum()), 0.0))
    if all(n == 0.0 for n in norms.values()):
        return "the editor returned a zero delta (it would change nothing)"
    for d in delta.layers:
        why = _overflow(model.get_parameter(d.name), d)
        if why:
            return f"{d.name}: {why}"
    for name, norm in norms.items():
        base = base_norm(name)
        if base > 0 and norm > max_delta_ratio * base:
            return (f"{name}: ‖ΔW‖_F = {norm:.4g} is {norm / base:.3g}× ‖W₀‖_F = {base:.4g}, "
                    f"over max_delta_ratio = {max_delta_ratio:g} (a degenerate solve, not an "
                    "edit)")
    return None


def _overflow(weight: torch.Tensor, d: LayerDelta) -> str | None:
    """Whether W + U Vᵀ leaves the dtype's finite range. The bound max|W| + Σⱼ max|uⱼ|·max|vⱼ|
    costs one pass over W; only when it fails is the sum formed, in float64, to be sure."""
    limit = torch.finfo(weight.dtype).max
    with torch.no_grad():
        w_max = float(weight.detach().abs().max()) if weight.numel() else 0.0
        bound = w_max + float((d.u.double().abs().amax(0) * d.v.double().abs().amax(0)).sum())
        if bound < limit:
            return None
        dense = d.u.double().to(weight.device) @ d.v.double().to(weight.device).T
        result = weight.detach().double() + (dense.T if d.transposed else dense)
        # The update is formed in float32 before it is added: that must stay finite too.
        if (bool(torch.isfinite(dense.float()).all())
                and bool(torch.isfinite(result.to(weight.dtype)).all())):
            return None
    return (f"W + ΔW would overflow {str(weight.dtype).removeprefix('torch.')} (largest "
            f"|entry| {float(result.abs().max()):.3g}, limit {limit:.3g})")


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
