"""MEMIT: least-squares updates spread over several MLP output projections (Meng et al. 2023,
"Mass-Editing Memory in a Transformer", arXiv 2210.07229, §4).

    Z   = optimised block outputs of the last edited layer (values.py, site "block"), [d, b]
    for i, l in enumerate(layers):              (increasing)
        K_i = template-averaged keys at l on the partially updated model   [d_in, b]
        R_i = (Z − H_i) / (|L| − i),  H_i = block output of the last layer on the bare prompts
        Δ_i = R_i K_iᵀ (λ C_l + K_i K_iᵀ)⁻¹       (float64 Cholesky; λ = mom2_update_weight)

Blocks that normalise the MLP output before the residual add (Gemma-2/3) break the spreading:
R_i is a residual-space vector, but what reaches the residual is norm(W k + R_i). There
(targets "mlp_out", chosen automatically by probing the block) each layer gets its own target
T_i in MLP-output space, all optimised jointly through the norms, and R_i = T_i − M_i with M_i
its current MLP output on the bare prompt (a documented deviation from MEMIT, which has no such
blocks in its evaluation).

Returned per layer as LayerDelta(u = R_i [d_out,b], v = (λC + KKᵀ)⁻¹K [d_in,b]): ΔW = u vᵀ;
`Delta.keys[weight name]` = K_i [d_in, b] (float32, columns are keys).

"Partially updated" without mutating the model: the deltas of earlier layers are added to their
mlp_out outputs by forward hooks (`keys.added_deltas`), which is (W + u vᵀ)k computed as
Wk + u(vᵀk). Hooks cannot leave the weights changed if anything raises, work for any storage
layout, and avoid writing d_out×d_in matrices twice per layer.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import keys as _keys
from . import values as _values
from .base import Delta, EditContext, LayerDelta, StatelessEditor
from .config import ValueConfig, check_layers, clamp_for, weight_decay_for

log = logging.getLogger("seqedit.editors")


TARGETS = ("auto", "block", "mlp_out")


@dataclass(frozen=True)
class LayerBandConfig(ValueConfig):
    """What MEMIT and AlphaEdit share: the edited layers and where their targets live.

    targets: "block" — MEMIT's one target at the last edited layer's block output, its residual
    spread over the layers; "mlp_out" — one target per layer at that layer's MLP output,
    optimised jointly (values.py with several sites), each layer writing its own; "auto" —
    "block" when every edited block adds its MLP output to the residual stream unchanged, else
    "mlp_out" (blocks that normalise the MLP output first, like Gemma-2/3's, distort a
    residual-space target beyond what the least-squares write can follow).
    """

    layers: tuple[int, ...] = (0,)
    targets: str = "auto"

    def _problems(self, spec):
        yield from super()._problems(spec)
        yield from check_layers(list(self.layers), spec)
        if self.layers and all(isinstance(x, int) for x in self.layers) and max(self.layers) > self.loss_layer(spec):
            yield f"layers {list(self.layers)} reach above v_loss_layer {self.loss_layer(spec)}"
        if self.targets not in TARGETS:
            yield f"targets must be one of {', '.join(TARGETS)}, got {self.targets!r}"

    @classmethod
    def _band_build(cls, spec, overrides: dict, **extra):
        defaults = dict(layers=tuple(spec.default_edit_layers()), v_loss_layer=spec.num_layers - 1,
                        clamp_norm_factor=clamp_for(spec), v_weight_decay=weight_decay_for(spec), **extra)
        if "layers" in overrides:
            overrides = {**overrides, "layers": tuple(overrides["layers"])}
        return cls._build(spec, defaults, overrides)


@dataclass(frozen=True)
class MemitConfig(LayerBandConfig):
    mom2_update_weight: float = 15000.0

    def _problems(self, spec):
        yield from super()._problems(spec)
        if not self.mom2_update_weight >= 0:
            yield f"mom2_update_weight must be >= 0, got {self.mom2_update_weight}"

    @classmethod
    def for_model(cls, spec, **overrides):
        return cls._band_build(spec, overrides, mom2_update_weight=mom2_weight_for(spec))


def mom2_weight_for(spec) -> float:
    """λ proportional to the key width, anchored at Llama-2-7B's 15000 for d_in = 11008.

    A layer writes the fraction s/(λ + s) of its residual, s = kᵀC⁻¹k, and s grows like d_in
    (E[kᵀC⁻¹k] = d_in for keys distributed like C; edit keys measure 1-4·d_in on SmolLM2). A
    fixed 15000 on a d_in = 1536 model writes ~10-30% per layer and edits fail; scaling keeps
    the regime the upstream configs were tuned in.
    """
    return float(round(15000.0 * spec.mlp_hidden_size / 11008))


def resolve_targets(model, ctx: EditContext, cfg: LayerBandConfig) -> str:
    """cfg.targets with "auto" decided by probing the edited blocks (memoised per session)."""
    if cfg.targets != "auto":
        return cfg.targets
    key = ("mlp_out_is_residual", tuple(sorted(cfg.layers)))
    if key not in ctx.memo:
        ctx.memo[key] = all(_keys.mlp_out_is_residual(model, ctx.spec, ctx.tokenizer, layer)
                            for layer in cfg.layers)
    return "block" if ctx.memo[key] else "mlp_out"


def layer_loop(model, requests, ctx: EditContext, cfg: LayerBandConfig, solve):
    """The MEMIT skeleton shared with AlphaEdit.

    `solve(layer, K, R)` gets float64 keys [d_in, b] and the residual the layer should write
    [d_out, b] and returns V [d_in, b] with Δ = R Vᵀ. Returns (LayerDeltas, keys per weight name,
    info). With targets "mlp_out", R_i = T_i − (MLP output of layer i on the bare prompt, partially
    updated model), T_i the jointly optimised target of layer i — no spreading.

    info["target_gap"]: per request, the target left unwritten after all layers' updates, relative
    to the start (one extra short forward): ‖z − H‖/‖z − H₀‖ at the last layer's block output
    ("block"), or over all layers' MLP outputs ‖T − M‖/‖T − M₀‖ ("mlp_out"). Near 0: the layers
    wrote their targets; above 1: the update moved the hidden state *away* from them (what
    "block" targets do on blocks that normalise the MLP output). Such an edit may still flip the
    prediction, by wrecking the hidden state; it is logged.
    """
    spec, tok = ctx.spec, ctx.tokenizer
    layers = sorted(cfg.layers)
    mode = resolve_targets(model, ctx, cfg)
    templates = _keys.context_templates(model, tok, ctx, starts=cfg.context_template_starts,
                                        length=cfg.context_template_length)
    if mode == "block":
        res = _values.target_values(model, spec, tok, requests, templates, layer=layers[-1], site="block", cfg=cfg)
        z = res.v_star.double()[:, None]  # [b, 1, d]
        reads = {"blocks": [layers[-1]]}
    else:
        res = _values.target_values(model, spec, tok, requests, templates, layer=tuple(layers), site="mlp_out",
                                    cfg=cfg)
        z = res.v_star.double().reshape(len(requests), len(layers), -1)  # [b, |L|, d]
        reads = {"mlp_outs": layers}

    def current(found) -> torch.Tensor:  # the bare-prompt states z targets, [b, 1 or |L|, d]
        names = [("bare_block", layers[-1])] if mode == "block" else [("bare_mlp_out", x) for x in layers]
        return torch.stack([found[n].double() for n in names], 1)

    factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    deltas, used_keys = [], {}
    # Layers below the band never change here: every key read after the first starts at layers[0].
    reader = _keys.KeyReader(model, spec, tok, requests, templates, start=layers[0], upto=layers[-1])
    for i, layer in enumerate(layers):
        # "mlp_out" needs only this layer's output, so its key forward stops at this layer.
        step = reads if mode == "block" else {"mlp_outs": [layer]}
        with _keys.added_deltas(model, spec, factors):
            found = reader([layer], **step)
        k = found[layer].double().T  # [d_in, b]
        if mode == "block":
            r = (z[:, 0] - current(found)[:, 0]).T / (len(layers) - i)  # [d, b]
        else:
            r = (z[:, i] - found[("bare_mlp_out", layer)].double()).T
        v = solve(layer, k, r)
        u32, v32 = r.float(), v.float()
        factors[layer] = (u32, v32)
        name = spec.mlp_out_weight_name(layer)
        deltas.append(LayerDelta(name, u32.cpu(), v32.cpu(), bool(spec.mlp_out_transposed)))
        used_keys[name] = k.float().cpu()
    with _keys.added_deltas(model, spec, factors):
        after = _keys.compute_keys(model, spec, tok, requests, (("{}",),), [], **reads)
    left = (z - current(after)).flatten(1).norm(dim=1)
    start = res.delta.double().reshape(len(requests), -1).norm(dim=1)
    # δ = 0 (target reached before any step): nothing to write, so nothing is left to write
    # (what `left` then holds is rounding between two forwards of different batch shapes).
    gap = [float(a / b) if b > 0 else 0.0 for a, b in zip(left, start)]
    if any(g > 1 for g in gap):
        log.warning("%s: the update moved the edited layers away from their targets (gap ratio %s)",
                    cfg.__class__.__name__, ", ".join(f"{g:.2f}" for g in gap))
    return deltas, used_keys, _values.value_info(res, layers) | {"target_gap": gap, "targets": mode}


def cholesky_solve(a: torch.Tensor, b: torch.Tensor, what: str) -> torch.Tensor:
    """a⁻¹b for symmetric positive definite `a` (float64); non-finite input gives a NaN result
    (which Delta.is_finite reports) instead of an exception deep inside LAPACK."""
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        return torch.full_like(b, float("nan"))
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise ValueError(
            f"{what} is not positive definite (Cholesky failed at column {int(info)}): the key "
            "statistics C are rank-deficient or not PSD; raise mom2_update_weight or collect C "
            "over more tokens"
        )
    return torch.cholesky_solve(b, chol)


def memit_solve(ctx: EditContext, layer: int, lam: float, k: torch.Tensor) -> torch.Tensor:
    """(λC + KKᵀ)⁻¹K, float64, for keys k [d_in, b].

    C is the same for every edit of a session, so the Cholesky factor of λC is computed once per
    layer (memoised in ctx.memo, recomputed if the provider hands out another C) and each edit
    costs two triangular solves: with Y = (λC)⁻¹K, Woodbury's identity gives
    (λC + KKᵀ)⁻¹K = Y (I + KᵀY)⁻¹ — the same solution as factoring λC + KKᵀ afresh (d_in³/3
    flops per layer and edit, ~5% of a MEMIT edit on SmolLM2). λ = 0, or a λC that is not
    positive definite (rank-deficient statistics), takes the direct path.
    """
    c = ctx.require_second_moment(layer)
    what = f"λ·C + KKᵀ at layer {layer}"
    if not bool(torch.isfinite(k).all()):
        return torch.full_like(k, float("nan"))

    def factorise(c):
        scaled = lam * c.to(k.device, torch.float64)
        if not (lam > 0 and bool(torch.isfinite(scaled).all())):
            return None
        chol, info = torch.linalg.cholesky_ex(scaled)
        return chol if int(info) == 0 else None

    factor = ctx.derived(("memit_factor", layer, float(lam), str(k.device)), c, factorise)
    if factor is None:
        return cholesky_solve(lam * c.to(k.device, torch.float64) + k @ k.T, k, what)
    y = torch.cholesky_solve(k, factor)
    small = torch.eye(k.shape[1], dtype=k.dtype, device=k.device) + k.T @ y
    return torch.linalg.solve(small, y.T).T  # small is symmetric: Y small⁻¹ = (small⁻¹ Yᵀ)ᵀ


class MemitEditor(StatelessEditor):
    name = "memit"

    def __init__(self, config: MemitConfig):
        self.config = config

    def compute(self, model, requests, ctx: EditContext) -> Delta:
        cfg = self.config
        cfg.check(ctx.spec)
        if not requests:
            raise ValueError("no requests to edit")

        def solve(layer, k, r):
            return memit_solve(ctx, layer, cfg.mom2_update_weight, k)

        deltas, keys, info = layer_loop(model, requests, ctx, cfg, solve)
        info["mom2_update_weight"] = cfg.mom2_update_weight
        # MEMIT needs no state, but its keys are what history-keeping guards (D4S) accumulate.
        return Delta(self.name, deltas, keys, info)
