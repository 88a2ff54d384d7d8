"""FT-L: constrained fine-tuning of one MLP output projection, the classic baseline.

ΔW (dense, [d_out, d_in]) minimises the mean per-token NLL of the target after the prompt
(teacher forcing, one padded batch for all requests) with Adam(lr) for at most `num_steps`
steps, projected after every step onto the L∞ ball ‖ΔW‖_∞ ≤ norm_constraint (the change
relative to the original weights, as in FT-L). The model is never written: ΔW acts through a
forward hook adding ΔW k to the module's output.

Adam's elementwise scaling makes ΔW full rank, so the Delta carries an exact factorisation:
ΔW = (U S) Vᵀ from a thin SVD, dropping singular values below the float32 rank tolerance
(σ ≤ σ_max · max(d_out, d_in) · eps32 — numerically zero). Rank ≤ min(d_out, d_in), which the
session applies through the same `rank_update_` path as every other editor (u = ΔW, v = I would
be rank d_in and not smaller).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _text
from .base import Delta, EditContext, LayerDelta, StatelessEditor
from .config import EditorConfig, check_layers
from .keys import model_device


@dataclass(frozen=True)
class FTConfig(EditorConfig):
    layer: int = 0
    lr: float = 5e-4
    num_steps: int = 25
    norm_constraint: float = 5e-4
    early_stop_loss: float = 1e-2

    def _problems(self, spec):
        yield from check_layers([self.layer], spec, "layer")
        if not self.lr > 0:
            yield f"lr must be > 0, got {self.lr}"
        if not (isinstance(self.num_steps, int) and self.num_steps >= 1):
            yield f"num_steps must be an int >= 1, got {self.num_steps!r}"
        if not self.norm_constraint > 0:
            yield f"norm_constraint must be > 0, got {self.norm_constraint}"
        if not self.early_stop_loss >= 0:
            yield f"early_stop_loss must be >= 0, got {self.early_stop_loss}"

    @classmethod
    def for_model(cls, spec, **overrides) -> "FTConfig":
        return cls.from_dict({"layer": spec.default_rome_layer(), **overrides}, spec)


class FTEditor(StatelessEditor):
    name = "ft"

    def __init__(self, config: FTConfig):
        self.config = config

    @property
    def layers(self) -> list[int]:
        return [self.config.layer]

    def compute(self, model, requests, ctx: EditContext) -> Delta:
        cfg, spec, tok = self.config, ctx.spec, ctx.tokenizer
        cfg.check(spec)
        if not requests:
            raise ValueError("no requests to edit")
        device = model_device(model)
        rows = []
        for r in requests:
            t_ids = _text.target_ids(tok, r.target_new)
            rows += _text.encode_rows(tok, [_text.fill("{}", r.prompt, r.subject)], [t_ids])
        batch = _text.pad(rows, _text.pad_id(tok), device)
        pos = torch.tensor([p for i, r in enumerate(rows) for p, _ in r.targets], device=device)
        row = torch.tensor([i for i, r in enumerate(rows) for _ in r.targets], device=device)
        tgt = torch.tensor([t for r in rows for _, t in r.targets], device=device)
        weight = torch.tensor([1.0 / (len(r.targets) * len(rows)) for r in rows for _ in r.targets], device=device)

        module = spec.mlp_out(model, cfg.layer)
        d_out, d_in = spec.hidden_size, spec.mlp_hidden_size
        dw = torch.zeros(d_out, d_in, device=device, requires_grad=True)
        opt = torch.optim.Adam([dw], lr=cfg.lr)

        def hook(mod, args, out):
            return out + torch.nn.functional.linear(args[0].to(dw.dtype), dw).to(out.dtype)

        handle = module.register_forward_hook(hook)
        losses = []
        try:
            for _ in range(cfg.num_steps):
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
                lp = torch.log_softmax(logits[row, pos].float(), -1).gather(1, tgt[:, None])[:, 0]
                loss = -(lp * weight).sum()
                losses.append(float(loss.detach()))
                if losses[-1] < cfg.early_stop_loss:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward(inputs=[dw])
                opt.step()
                with torch.no_grad():
                    dw.clamp_(-cfg.norm_constraint, cfg.norm_constraint)
        finally:
            handle.remove()
        u, v = exact_factors(dw.detach())
        ld = LayerDelta(spec.mlp_out_weight_name(cfg.layer), u.cpu(), v.cpu(), bool(spec.mlp_out_transposed))
        info = {"layers": [cfg.layer], "loss_first": losses[0], "loss_last": losses[-1], "steps": len(losses),
                "rank": ld.rank}
        return Delta(self.name, [ld], {}, info)


def exact_factors(dw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U·S, V) of a thin SVD without the numerically-zero directions: dw ≈ u vᵀ to float32."""
    if not bool(torch.isfinite(dw).all()):
        nan = torch.full((dw.shape[0], 1), float("nan"))
        return nan, torch.full((dw.shape[1], 1), float("nan"))
    u, s, vh = torch.linalg.svd(dw.double(), full_matrices=False)
    tol = float(s.max()) * max(dw.shape) * torch.finfo(torch.float32).eps if s.numel() else 0.0
    keep = max(int((s > tol).sum()), 1)
    return (u[:, :keep] * s[:keep]).float(), vh[:keep].T.float()
