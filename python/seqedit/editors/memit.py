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

Failures are `SolveError`s naming the layer, raised before anything changes (`_solve.py`): key
statistics that are malformed (shape, dtype, non-finite, asymmetric) or indefinite, and a
system λC + KKᵀ that is not positive definite or whose estimated condition number exceeds 1e12
(rank-deficient statistics the edit's keys do not make up for). They are checked once per layer
and session, before the value optimisation, except the direct path's per-edit factor.

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
from . import _solve
from . import norm as _norm
from .base import Delta, EditContext, LayerDelta, SolveError, StatelessEditor
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

    Norm control (norm.py, all off by default): update_norm_weight — ENCORE's μ‖ΔW‖²_F added to
    the least-squares objective; nas_anchor — NAS's reference norms, one per target site (one for
    "block", one per edited layer for "mlp_out"; empty: off), measured by norm.measure_anchor;
    keep_target_norm — "mlp_out" targets only: each rescaled to the norm of the output it
    replaces, which a block that normalises its MLP output cannot tell apart (our addition).
    """

    layers: tuple[int, ...] = (0,)
    targets: str = "auto"
    update_norm_weight: float = 0.0
    nas_anchor: tuple[float, ...] = ()
    keep_target_norm: bool = False

    def _problems(self, spec):
        yield from super()._problems(spec)
        yield from check_layers(list(self.layers), spec)
        if self.layers and all(isinstance(x, int) for x in self.layers) and max(self.layers) > self.loss_layer(spec):
            yield f"layers {list(self.layers)} reach above v_loss_layer {self.loss_layer(spec)}"
        if self.targets not in TARGETS:
            yield f"targets must be one of {', '.join(TARGETS)}, got {self.targets!r}"
        if not self.update_norm_weight >= 0:
            yield f"update_norm_weight must be >= 0, got {self.update_norm_weight}"
        if not all(a > 0 for a in self.nas_anchor):
            yield f"nas_anchor norms must be > 0, got {list(self.nas_anchor)}"
        if self.keep_target_norm and self.targets == "block":
            yield "keep_target_norm needs 'mlp_out' targets (or 'auto'), got targets 'block'"
        if self.keep_target_norm and self.nas_anchor:
            yield "keep_target_norm and nas_anchor both set a target's norm: choose one"
        if len(self.nas_anchor) not in (0, 1, len(self.layers)):
            yield (f"nas_anchor needs one norm per target site (1 for 'block' targets, "
                   f"{len(self.layers)} for 'mlp_out'), got {len(self.nas_anchor)}")

    @classmethod
    def _band_build(cls, spec, overrides: dict, **extra):
        defaults = dict(layers=tuple(spec.default_edit_layers()), v_loss_layer=spec.num_layers - 1,
                        clamp_norm_factor=clamp_for(spec), v_weight_decay=weight_decay_for(spec), **extra)
        return cls.from_dict({**defaults, **overrides}, spec)


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

    With `cfg.nas_anchor` (or `cfg.keep_target_norm`) the targets are rescaled before any layer
    writes (norm.py), and the gap is measured against those targets.
    """
    spec, tok = ctx.spec, ctx.tokenizer
    layers = sorted(cfg.layers)
    mode = resolve_targets(model, ctx, cfg)
    if cfg.keep_target_norm and mode != "mlp_out":  # refused before the value optimisation
        raise ValueError("keep_target_norm: these blocks add the MLP output to the residual "
                         "unchanged, so a target's norm matters; use it only where 'auto' "
                         "picks 'mlp_out' targets (blocks that normalise the MLP output)")
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

    moved, rescaled = res.delta.double(), {}
    if cfg.nas_anchor:
        z, moved, rescaled = _norm.nas_targets(model, ctx, requests, res, layers, mode, cfg.nas_anchor)
    if cfg.keep_target_norm:
        z, moved, rescaled = _norm.norm_kept_targets(model, ctx, requests, res, layers)

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
        if not bool(torch.isfinite(k).all() and torch.isfinite(r).all()):
            raise SolveError(f"layer {layer}: non-finite keys or residual (the model's hidden states, "
                             "with the lower layers' updates added, are not finite)")
        v = solve(layer, k, r)
        u32, v32 = r.float(), v.float()
        factors[layer] = (u32, v32)
        name = spec.mlp_out_weight_name(layer)
        deltas.append(LayerDelta(name, u32.cpu(), v32.cpu(), bool(spec.mlp_out_transposed)))
        used_keys[name] = k.float().cpu()
    with _keys.added_deltas(model, spec, factors):
        after = _keys.compute_keys(model, spec, tok, requests, (("{}",),), [], **reads)
    left = (z - current(after)).flatten(1).norm(dim=1)
    start = moved.reshape(len(requests), -1).norm(dim=1)
    # δ = 0 (target reached before any step): nothing to write, so nothing is left to write
    # (what `left` then holds is rounding between two forwards of different batch shapes).
    gap = [float(a / b) if b > 0 else 0.0 for a, b in zip(left, start)]
    if any(g > 1 for g in gap):
        log.warning("%s: the update moved the edited layers away from their targets (gap ratio %s)",
                    cfg.__class__.__name__, ", ".join(f"{g:.2f}" for g in gap))
    return deltas, used_keys, _values.value_info(res, layers) | {"target_gap": gap, "targets": mode} | rescaled


def cholesky_solve(a: torch.Tensor, b: torch.Tensor, what: str, hint: str = "") -> torch.Tensor:
    """a⁻¹b for symmetric positive definite `a` (float64); SolveError, naming `what` (and
    suggesting `hint`), when `a` is non-finite, not positive definite or ill-conditioned."""
    if not bool(torch.isfinite(b).all()):
        raise SolveError(f"{what}: the right-hand side has non-finite entries")
    chol, problem = _solve.spd_factor(a)
    if problem is not None:
        raise SolveError(f"{what} {problem}" + (f"; {hint}" if hint else ""))
    return torch.cholesky_solve(b, chol)


def memit_factor(ctx: EditContext, layer: int, lam: float, d_in: int, device,
                 mu: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(C, Cholesky factor of λC) for `layer`: C validated, the factor memoised per session
    (ctx.derived); SolveError where no edit at this layer can be solved (C malformed or indefinite).
    With ENCORE's norm term (μ > 0, norm.py) λC stands for λC + μI here and in `memit_solve`.

    The factor is None where λC cannot serve the fast path (λ = 0, or λC singular or
    ill-conditioned) and the direct path must factor λC + KKᵀ per edit. Called once per layer
    before the value optimisation, so a hopeless edit is refused before its expensive part.
    """
    c = _solve.second_moment(ctx, layer, d_in)

    def factorise(c):
        if not (lam > 0 or mu > 0):
            return _solve.Factor(None, None)
        c64 = c.to(device, torch.float64)
        chol, _ = _solve.spd_factor(_norm.regularised(lam * c64, mu))
        return _solve.Factor(chol, None if chol is not None else _solve.indefinite(c64))

    factor = ctx.derived(("memit_factor", layer, float(lam), str(device), float(mu)), c, factorise)
    if factor.refusal is not None:
        raise SolveError(f"MEMIT at layer {layer}: key statistics C {factor.refusal}; recompute them "
                         "on the unedited model (seqedit.stats.second_moments)")
    return c, factor.chol


def memit_solve(ctx: EditContext, layer: int, lam: float, k: torch.Tensor, mu: float = 0.0) -> torch.Tensor:
    """(λC + KKᵀ)⁻¹K, float64, for keys k [d_in, b]; SolveError when it cannot be solved safely.

    C is the same for every edit of a session, so the Cholesky factor of λC is computed once per
    layer (`memit_factor`) and each edit costs two triangular solves: with Y = (λC)⁻¹K,
    Woodbury's identity gives (λC + KKᵀ)⁻¹K = Y (I + KᵀY)⁻¹ — the same solution as factoring
    λC + KKᵀ afresh (d_in³/3 flops per layer and edit, ~5% of a MEMIT edit on SmolLM2). I + KᵀY
    is symmetric with eigenvalues ≥ 1, so with λC well-conditioned (checked once, with the factor)
    the fast path is too. λ = 0, or a λC that is singular or ill-conditioned (rank-deficient
    statistics), takes the direct path, whose factor is checked the same way per edit: keys that
    cover C's null space can still make λC + KKᵀ well posed.
    """
    if not bool(torch.isfinite(k).all()):
        raise SolveError(f"MEMIT at layer {layer}: the edit's keys have non-finite entries")
    d_in = k.shape[0]
    c, chol = memit_factor(ctx, layer, lam, d_in, k.device, mu)
    if chol is None:
        if lam > 0:
            hint = (f"λ·C alone is singular or ill-conditioned (rank-deficient statistics) and the "
                    f"edit's keys do not make up for it: collect C over more tokens (well above "
                    f"d_in = {d_in}) or regularise it (C + μI)")
        else:
            hint = (f"mom2_update_weight is 0, so the system is KKᵀ alone, singular with fewer than "
                    f"d_in = {d_in} independent keys: use mom2_update_weight > 0")
        a = _norm.regularised(lam * c.to(k.device, torch.float64), mu) + k @ k.T
        return cholesky_solve(a, k, f"MEMIT at layer {layer}: λ·C + KKᵀ", hint)
    y = torch.cholesky_solve(k, chol)
    small = torch.eye(k.shape[1], dtype=k.dtype, device=k.device) + k.T @ y
    v = torch.linalg.solve_ex(small, y.T)[0].T  # small is symmetric: Y small⁻¹ = (small⁻¹ Yᵀ)ᵀ
    if not bool(torch.isfinite(v).all()):
        raise SolveError(f"MEMIT at layer {layer}: the solve overflowed (keys of norm "
                         f"{float(k.norm(dim=0).max()):.3g} against λ = {lam:g})")
    return v


class MemitEditor(StatelessEditor):
    name = "memit"

    def __init__(self, config: MemitConfig):
        self.config = config

    @property
    def layers(self) -> list[int]:
        return sorted(self.config.layers)

    def compute(self, model, requests, ctx: EditContext) -> Delta:
        cfg = self.config
        cfg.check(ctx.spec)
        if not requests:
            raise ValueError("no requests to edit")
        device = _keys.model_device(model)
        lam, mu = cfg.mom2_update_weight, cfg.update_norm_weight
        for layer in cfg.layers:
            memit_factor(ctx, layer, lam, ctx.spec.mlp_hidden_size, device, mu)

        def solve(layer, k, r):
            return memit_solve(ctx, layer, lam, k, mu)

        deltas, keys, info = layer_loop(model, requests, ctx, cfg, solve)
        info["mom2_update_weight"] = lam
        if mu:
            info["update_norm_weight"] = mu
        # MEMIT needs no state, but its keys are what history-keeping guards (D4S) accumulate.
        return Delta(self.name, deltas, keys, info)
