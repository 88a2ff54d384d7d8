"""ROME: a rank-one update of one MLP output projection (Meng et al. 2022, "Locating and Editing
Factual Associations in GPT", arXiv 2202.05262, §3).

    k̄   = template-averaged key;  u = C⁻¹k̄ / ‖C⁻¹k̄‖ (mom2_adjustment) or k̄ / ‖k̄‖
    k_p = key on the bare prompt (fixed_key: k̄ instead — r-ROME, arXiv 2403.07175)
    v*  = optimised output of mlp_out at the subject's last token (values.py, site "mlp_out")
    ΔW  = (v* − out(k_p)) uᵀ / (uᵀ k_p)     with out(k) = W k (+ bias), so (W + ΔW) k_p = v*.

Returned as LayerDelta(u = r [d_out,1], v = u [d_in,1]).

C⁻¹k̄ goes through a Cholesky factor of C (a second moment: symmetric PSD), made and checked
once per layer and session. Malformed statistics (shape, dtype, non-finite, asymmetric), a C
that is indefinite, singular or ill-conditioned (estimated condition number above 1e12, see
`_solve.py`), a zero key, and a bare-prompt key (nearly) orthogonal to u — |cos(k_p, u)| below
1e-6, where the division by uᵀk_p would make ΔW a million times the minimal write — are
`SolveError`s naming the layer, raised before anything changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import keys as _keys
from . import values as _values
from . import _solve
from .base import Delta, EditContext, LayerDelta, SolveError, StatelessEditor
from .config import ValueConfig, check_layers, weight_decay_for

# |cos(k_p, u)| below this: ΔW = r uᵀ/(uᵀk_p) would exceed the minimal-norm update mapping k_p to
# v* by its inverse — an update no statistics justify. Below the Kantorovich bound 2√κ/(1+κ) on
# cos(k, C⁻¹k) for κ ≤ 1e12 (the condition check's limit), so fixed_key edits never reach it.
MIN_KEY_ALIGNMENT = 1e-6


@dataclass(frozen=True)
class RomeConfig(ValueConfig):
    layer: int = 0
    mom2_adjustment: bool = True
    fixed_key: bool = False

    def _problems(self, spec):
        yield from super()._problems(spec)
        yield from check_layers([self.layer], spec, "layer")
        if isinstance(self.layer, int) and self.layer > self.loss_layer(spec):
            yield f"layer {self.layer} is above v_loss_layer {self.loss_layer(spec)}"

    @classmethod
    def for_model(cls, spec, **overrides) -> "RomeConfig":
        defaults = dict(layer=spec.default_rome_layer(), v_loss_layer=spec.num_layers - 1,
                        # 4 on every family: upstream ROME configs for gpt2-xl and llama agree.
                        clamp_norm_factor=4.0, v_weight_decay=weight_decay_for(spec))
        return cls.from_dict({**defaults, **overrides}, spec)


class RomeEditor(StatelessEditor):
    name = "rome"

    def __init__(self, config: RomeConfig):
        self.config = config

    @property
    def layers(self) -> list[int]:
        return [self.config.layer]

    def compute(self, model, requests, ctx: EditContext) -> Delta:
        cfg, spec = self.config, ctx.spec
        cfg.check(spec)
        if len(requests) != 1:
            raise ValueError(f"ROME edits one request per step, got {len(requests)}; use MEMIT for batches")
        layer = cfg.layer
        templates = _keys.context_templates(model, ctx.tokenizer, ctx, starts=cfg.context_template_starts,
                                            length=cfg.context_template_length)
        found = _keys.compute_keys(model, spec, ctx.tokenizer, requests, templates, [layer])
        k_bar = found[layer][0].double()
        k_p = k_bar if cfg.fixed_key else found[("bare_key", layer)][0].double()
        if not bool(torch.isfinite(k_bar).all() and torch.isfinite(k_p).all()):
            raise SolveError(f"ROME at layer {layer}: the edit's keys have non-finite entries")
        if not (float(k_bar.norm()) > 0 and float(k_p.norm()) > 0):
            raise SolveError(f"ROME at layer {layer}: the edit's key is zero, so there is no direction "
                             "to write along")
        u = _c_solve(ctx, layer, k_bar) if cfg.mom2_adjustment else k_bar
        u = u / u.norm()
        align = float(k_p @ u / k_p.norm())
        if not abs(align) >= MIN_KEY_ALIGNMENT:
            raise SolveError(f"ROME at layer {layer}: the bare prompt's key is orthogonal to the update "
                             f"direction (cos = {align:.2g}); dividing by it would make ΔW "
                             f"{1 / max(abs(align), 1e-300):.2g} times the minimal update (try fixed_key=True)")
        res = _values.target_values(model, spec, ctx.tokenizer, requests, templates, layer=layer,
                                    site="mlp_out", cfg=cfg)
        module = spec.mlp_out(model, layer)
        with torch.no_grad():
            current = module(k_p.to(_dtype(module))[None])[0].double()
        r = (res.v_star[0].double() - current) / (k_p @ u)
        name = spec.mlp_out_weight_name(layer)
        ld = LayerDelta(name, r.float()[:, None].cpu(), u.float()[:, None].cpu(), bool(spec.mlp_out_transposed))
        info = _values.value_info(res, [layer]) | {"fixed_key": cfg.fixed_key}
        return Delta(self.name, [ld], {}, info)


def _c_solve(ctx: EditContext, layer: int, k: torch.Tensor) -> torch.Tensor:
    """C⁻¹k from a Cholesky factor of C made and checked once per session and layer (ctx.derived):
    the same solution as torch.linalg.solve without refactoring C every edit, and a SolveError
    where C is malformed, indefinite, singular or ill-conditioned."""
    c = _solve.second_moment(ctx, layer, k.shape[0])

    def factorise(c):
        c = c.to(k.device, torch.float64)
        chol, problem = _solve.spd_factor(c)
        if problem is None:
            return _solve.Factor(chol, None)
        bad = _solve.indefinite(c)
        if bad is not None:
            return _solve.Factor(None, f"{bad}; recompute them on the unedited model (seqedit.stats.second_moments)")
        return _solve.Factor(None, f"{problem}; ROME needs C positive definite and well-conditioned: collect "
                             f"C over more tokens (well above d_in = {c.shape[0]}), regularise it (C + μI) "
                             "or use mom2_adjustment=False")

    factor = ctx.derived(("rome_cholesky", layer, str(k.device)), c, factorise)
    if factor.refusal is not None:
        raise SolveError(f"ROME at layer {layer}: key statistics C {factor.refusal}")
    return torch.cholesky_solve(k[:, None], factor.chol)[:, 0]


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
