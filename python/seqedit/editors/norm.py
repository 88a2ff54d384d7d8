"""Norm control for MEMIT and AlphaEdit: two post-seed methods, both off by default and each
usable with either editor (fields of `LayerBandConfig`), and `keep_target_norm`, our own rule for
"mlp_out" targets (`norm_kept_targets`).

**ENCORE's norm constraint** (`update_norm_weight` = μ). Gupta et al., "Lifelong Sequential
Knowledge Editing without Model Degradation" (arXiv 2502.01636; its abstract: an "explicit
Frobenius norm-constraint" added to the editing objective). The paper's text was not available
here; the formula is read from its code, scalable-model-editing/encore @ b87d96d,
`encore/encore_main.py`, which adds `update_norm_lambda · I` to λC before the solve. That is the
minimiser of the MEMIT objective plus μ‖ΔW‖²_F, the norm of *this step's update* (‖Ŵ − W‖_F
with W the weights before the step), not of the whole edited matrix ‖Ŵ‖_F. Per layer:

    min  λ‖ΔW C^½‖²_F + ‖ΔW K − R‖²_F + μ‖ΔW‖²_F   ⇒   ΔW = R Kᵀ (λC + KKᵀ + μI)⁻¹.

Released values: μ = 10 with λ = 20000 (GPT2-XL), 10 with 15000 (Llama2-7B), 20 with 15000
(Llama3-8B). AlphaEdit's objective already has α‖ΔW‖²_F (`l2_weight`; ΔW = ΔP), so there the
constraint adds to it: α + μ. ENCORE's code also adds the committed edits' Σ K_pK_pᵀ to MEMIT's
system (`add_prev_edits`, in its MEMIT baseline as well); seqedit's MEMIT is stateless and does
not (AlphaEdit does). MPES, ENCORE's other half, is `early_stop_on_argmax` with
`argmax_patience` (values.py; differences from the code's rule in editors/encore.py).

**NAS, norm-anchor scaling** (`nas_anchor`). Liu et al., "Toward Ultra-Long-Horizon Sequential
Model Editing" (arXiv 2602.02543; v3 "Norm Anchors Make Model Edits Last"): "rescaling each
solved value vector to an original-model reference norm". Read from its code, SasyaTitech/NAS @
38ac1c8, `NAS/compute_z.py` and `util/vstar_stats.py`: the solved value vector is the MLP-output
part of MEMIT's block target z = v_init + δ at the last edited layer, v* = v₀ + δ with v₀ that
layer's MLP output on the bare prompt; r = v_init − v₀ (what enters the MLP's residual add) is
kept. Then

    v* ← ā · v*/‖v*‖,  or v* ← v₀ (the request's δ is dropped) when ‖v*‖ > 2ā;   z ← r + v*,

ā the reference norm of that layer: the mean of ‖v₀ + δ‖ over 1000 random CounterFact requests
optimised on the unedited model with bare prompts only (no context templates), the top 5%
dropped, computed once with MEMIT's value settings and reused for AlphaEdit. Here ā is a config
value (so a ledger records it and a resumed session uses the same one) that `measure_anchor`
measures the same way on requests the caller chooses. With targets "mlp_out" each layer's
target T_i is already an MLP output: it is v*, rescaled to that layer's own anchor (one per
edited layer; our extension, the paper's blocks need no such targets).
"""
from __future__ import annotations

import math

import torch

from . import keys as _keys
from . import values as _values
from .base import SolveError

NAS_OUTLIER = 2.0  # the released code's fixed factor: beyond 2ā a request's δ is dropped
NAS_TRIM = 0.05  # the released code drops the top 5% of the measured norms
_BARE = (("{}",),)


def regularised(a: torch.Tensor, mu: float) -> torch.Tensor:
    """a + μI: the system matrix with ENCORE's norm term (a itself when μ = 0)."""
    if mu == 0:
        return a
    return a + mu * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)


def anchored(v: torch.Tensor, fallback: torch.Tensor, anchor: torch.Tensor):
    """NAS on value vectors v [..., sites, d] with one anchor per site: (rescaled v, dropped),
    `dropped` [..., sites] marking the vectors beyond NAS_OUTLIER·anchor, replaced by `fallback`."""
    norm = v.norm(dim=-1, keepdim=True)
    if not bool((norm > 0).all()):
        raise SolveError("NAS: a solved value vector is zero, so it has no direction to rescale")
    anchor = anchor.to(v.dtype)[:, None]
    dropped = norm > NAS_OUTLIER * anchor
    return torch.where(dropped, fallback, v * (anchor / norm)), dropped[..., 0]


def solved_values(model, ctx, requests, res, layers, mode: str):
    """(v*, v₀) [b, sites, d] float64: what the target asks each site's MLP to output, and what
    it outputs now (v* − δ). Block targets need v₀ read: one short forward on the bare prompts."""
    b = len(requests)
    if mode == "block":
        found = _keys.compute_keys(model, ctx.spec, ctx.tokenizer, requests, _BARE, [], mlp_outs=[layers[-1]])
        v0 = found[("bare_mlp_out", layers[-1])].double()[:, None]
        return v0 + res.delta.double()[:, None], v0
    v = res.v_star.double().reshape(b, len(layers), -1)
    return v, v - res.delta.double().reshape(b, len(layers), -1)


def nas_targets(model, ctx, requests, res, layers, mode: str, anchors):
    """NAS applied to a value optimisation's result: (targets shaped as layer_loop's z, the
    targets' displacement from the current outputs [b, sites, d], info for `Delta.info`)."""
    v, v0 = solved_values(model, ctx, requests, res, layers, mode)
    if len(anchors) != v.shape[1]:
        raise ValueError(f"nas_anchor has {len(anchors)} value(s), but targets {mode!r} on layers "
                         f"{layers} have {v.shape[1]} site(s): measure them with norm.measure_anchor")
    scaled, dropped = anchored(v, v0, torch.tensor(anchors, dtype=torch.float64, device=v.device))
    z = res.v_init.double()[:, None] - v0 + scaled if mode == "block" else scaled
    info = {"nas_anchor": list(anchors), "nas_norm_before": v.norm(dim=-1).tolist(),
            "nas_dropped": dropped.tolist()}
    return z, scaled - v0, info


def norm_kept_targets(model, ctx, requests, res, layers):
    """"mlp_out" targets rescaled to the norm of the output they replace, for blocks that
    normalise the MLP output before the residual add (Gemma-2/3). Such a block maps c·T and T to
    the same residual for any c > 0, so the value optimisation leaves a target's norm free and
    its δ runs to the clamp (‖δ‖ = clamp_norm_factor·‖v₀‖: 49 of 50 layer targets of the first 10
    Gemma-3-270M edits); each edit then writes residuals several times the output's norm, and
    the next edit's v₀, hence its clamp, grows with them. T·‖v₀‖/‖T‖ has the same effect on the
    bare prompt with a residual of at most 2‖v₀‖ (v₀: the site's output in the optimised forward,
    the lower sites' δ added). Returns (targets [b, sites, d], their displacement from v₀, info)."""
    v, v0 = solved_values(model, ctx, requests, res, layers, "mlp_out")
    norm = v.norm(dim=-1, keepdim=True)
    if not bool((norm > 0).all()):
        raise SolveError("keep_target_norm: a solved target is zero, so it has no direction to rescale")
    kept = v * (v0.norm(dim=-1, keepdim=True) / norm)
    return kept, kept - v0, {"kept_norm_before": norm[..., 0].tolist()}


def measure_anchor(model, requests, ctx, cfg, *, batch_size: int = 16) -> tuple[float, ...]:
    """NAS reference norms for `cfg` (MEMIT or AlphaEdit), to pass as `nas_anchor`: per target
    site, the mean ‖v₀ + δ‖ over `requests` (bare prompts, `cfg`'s value settings), the top
    NAS_TRIM of them dropped. `model` must be the unedited model (the anchor is the original
    model's norm); the paper's code uses 1000 random CounterFact requests."""
    from .memit import resolve_targets  # memit imports this module

    if not requests:
        raise ValueError("no requests to measure the NAS anchor on")
    layers = sorted(cfg.layers)
    mode = resolve_targets(model, ctx, cfg)
    where = dict(layer=layers[-1], site="block") if mode == "block" else dict(layer=tuple(layers), site="mlp_out")
    norms = []
    for i in range(0, len(requests), batch_size):
        chunk = list(requests[i:i + batch_size])
        res = _values.target_values(model, ctx.spec, ctx.tokenizer, chunk, _BARE, cfg=cfg, **where)
        norms.append(solved_values(model, ctx, chunk, res, layers, mode)[0].norm(dim=-1))
    ordered = torch.cat(norms).sort(dim=0).values
    kept = ordered[: ordered.shape[0] - math.floor(NAS_TRIM * ordered.shape[0])]
    return tuple(float(x) for x in kept.mean(dim=0))
