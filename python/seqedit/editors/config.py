"""Hyperparameters shared by the editors that optimise a target value (ROME, MEMIT, AlphaEdit).

Defaults follow the EasyEdit hyperparameter files and the PRUNE configs (Ma et al., arXiv
2405.16821) for Llama-like models. Each editor's config adds its own fields and a
`for_model(spec, **overrides)` that derives the model-dependent ones (layers, v_loss_layer,
clamp) from the ModelSpec.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .keys import DEFAULT_STARTS

def clamp_for(spec) -> float:
    """0.75 for LayerNorm residual streams (GPT-2, GPT-J, NeoX: their upstream configs), else 4
    (the Llama-style RMSNorm configs). Decided by the model's structure (`spec.norm_bias`)."""
    return 0.75 if spec.norm_bias else 4.0


def weight_decay_for(spec) -> float:
    return 0.5 if spec.norm_bias else 1e-3


@dataclass(frozen=True)
class ValueConfig:
    v_loss_layer: int = -1  # -1: the last layer
    v_lr: float = 0.5
    v_num_grad_steps: int = 25
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    early_stop_loss: float = 5e-2
    # Stop a request as soon as its target is the argmax at every scored position (ENCORE's
    # "most probable" stop). Off by default: upstream runs until loss < early_stop_loss.
    early_stop_on_argmax: bool = False
    # With early_stop_on_argmax: the target must beat every other token by more than this many
    # nats of log-probability. MEMIT realises only part of δ through its least-squares update, so a
    # bare argmax inside the optimisation can land short once the edit is applied: on SmolLM2-135M
    # margin 0 kept 19/20 MEMIT edits, margin 1 kept 99/100. The default 0 is the bare argmax this
    # flag meant before the field existed (ledgers written then resume with it).
    argmax_margin: float = 0.0
    kl_prompt: str = "{} is a"
    context_template_starts: tuple[str, ...] = DEFAULT_STARTS
    context_template_length: int = 10
    # The fast path (cached prefix activations, logits at scored rows only) or the slow
    # reference (a full forward per step, one request at a time). Same result, see values.py.
    fast: bool = True

    def check(self, spec) -> None:
        """Raise ValueError naming every bad field (against `spec` for layer indices)."""
        problems = list(self._problems(spec))
        if problems:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(problems))

    def _problems(self, spec):
        n = spec.num_layers
        if not (self.v_loss_layer == -1 or 0 <= self.v_loss_layer < n):
            yield f"v_loss_layer={self.v_loss_layer} is not a layer of this {n}-layer model (or -1)"
        if not self.v_lr > 0:
            yield f"v_lr must be > 0, got {self.v_lr}"
        if not (isinstance(self.v_num_grad_steps, int) and self.v_num_grad_steps >= 1):
            yield f"v_num_grad_steps must be an int >= 1, got {self.v_num_grad_steps!r}"
        if not self.v_weight_decay >= 0:
            yield f"v_weight_decay must be >= 0, got {self.v_weight_decay}"
        if not self.clamp_norm_factor > 0:
            yield f"clamp_norm_factor must be > 0, got {self.clamp_norm_factor}"
        if not self.kl_factor >= 0:
            yield f"kl_factor must be >= 0, got {self.kl_factor}"
        if not self.early_stop_loss >= 0:
            yield f"early_stop_loss must be >= 0, got {self.early_stop_loss}"
        if not self.argmax_margin >= 0:
            yield f"argmax_margin must be >= 0, got {self.argmax_margin}"
        if self.kl_prompt.count("{}") != 1:
            yield f"kl_prompt must contain exactly one '{{}}', got {self.kl_prompt!r}"
        if not (isinstance(self.context_template_length, int) and self.context_template_length >= 1):
            yield f"context_template_length must be an int >= 1, got {self.context_template_length!r}"

    def loss_layer(self, spec) -> int:
        return spec.num_layers - 1 if self.v_loss_layer == -1 else self.v_loss_layer

    @classmethod
    def _build(cls, spec, defaults: dict, overrides: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown}; fields: {sorted(names)}")
        cfg = cls(**{**defaults, **overrides})
        cfg.check(spec)
        return cfg


def check_layers(layers, spec, what: str = "layers"):
    n = spec.num_layers
    if not layers:
        yield f"{what} must not be empty"
    for layer in layers:
        if not (isinstance(layer, int) and 0 <= layer < n):
            yield f"{what} contains {layer!r}, not a layer index of this {n}-layer model"
    if len(set(layers)) != len(layers):
        yield f"{what} has duplicates: {list(layers)}"
