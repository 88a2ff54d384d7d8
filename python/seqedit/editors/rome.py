"""ROME: a rank-one update of one MLP output projection (Meng et al. 2022, "Locating and Editing
Factual Associations in GPT", arXiv 2202.05262, §3).

    k̄   = template-averaged key;  u = C⁻¹k̄ / ‖C⁻¹k̄‖ (mom2_adjustment) or k̄ / ‖k̄‖
    k_p = key on the bare prompt (fixed_key: k̄ instead — r-ROME, arXiv 2403.07175)
    v*  = optimised output of mlp_out at the subject's last token (values.py, site "mlp_out")
    ΔW  = (v* − out(k_p)) uᵀ / (uᵀ k_p)     with out(k) = W k (+ bias), so (W + ΔW) k_p = v*.

Returned as LayerDelta(u = r [d_out,1], v = u [d_in,1]).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import keys as _keys
from . import values as _values
from .base import Delta, EditContext, LayerDelta, StatelessEditor
from .config import ValueConfig, check_layers, weight_decay_for


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
        return cls._build(spec, defaults, overrides)


class RomeEditor(StatelessEditor):
    name = "rome"

    def __init__(self, config: RomeConfig):
        self.config = config

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
        if cfg.mom2_adjustment:
            u = _c_solve(ctx, layer, k_bar)
        else:
            u = k_bar
        u = u / u.norm()
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
    """C⁻¹k from an LU factorisation of C made once per session and layer (ctx.derived): the same
    LAPACK solve as torch.linalg.solve, without refactoring C (2/3·d_in³ flops) every edit."""
    def factorise(c):
        c = c.to(k.device, torch.float64)
        return torch.linalg.lu_factor(c) if bool(torch.isfinite(c).all()) else None

    factor = ctx.derived(("rome_lu", layer, str(k.device)), ctx.require_second_moment(layer), factorise)
    if factor is None:
        return torch.full_like(k, float("nan"))
    return torch.linalg.lu_solve(*factor, k[:, None])[:, 0]


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
