"""Hyperparameters shared by the editors that optimise a target value (ROME, MEMIT, AlphaEdit).

Defaults follow the EasyEdit hyperparameter files and the PRUNE configs (Ma et al., arXiv
2405.16821) for Llama-like models. Each editor's config adds its own fields and a
`for_model(spec, **overrides)` that derives the model-dependent ones (layers, v_loss_layer,
clamp) from the ModelSpec.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .keys import DEFAULT_STARTS

def clamp_for(spec) -> float:
    """0.75 for LayerNorm residual streams (GPT-2, GPT-J, NeoX: their upstream configs), else 4
    (the Llama-style RMSNorm configs). Decided by the model's structure (`spec.norm_bias`)."""
    return 0.75 if spec.norm_bias else 4.0


def weight_decay_for(spec) -> float:
    return 0.5 if spec.norm_bias else 1e-3


class EditorConfig:
    """Base of the editor config dataclasses: their checks and their JSON form.

    `to_dict()` is what a session records in its manifest and hashes (`config_hash`): it must
    keep the form ledgers already hold (field name → value, tuples as lists), or they would no
    longer resume.
    """

    def check(self, spec) -> None:
        """Raise ValueError naming every bad field (against `spec` for layer indices)."""
        check_config(self, spec)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], spec):
        """The checked config `data` describes (a `to_dict()`, maybe through JSON). A field it
        lacks takes its dataclass default, which by rule means what the field's absence meant
        before it existed."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict takes a mapping of field values, got "
                             f"{type(data).__name__} {data!r:.80}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown}; fields: {sorted(names)}")
        cfg = cls(**tuples_for_lists(cls, dict(data)))
        cfg.check(spec)
        return cfg


@dataclass(frozen=True)
class ValueConfig(EditorConfig):
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
    # With early_stop_on_argmax: stop at the argmax_patience-th forward at which the target leads
    # (counted, not necessarily in a row). ENCORE's MPES runs with 2-4 (its negative prob_cutoff,
    # editors/encore.py); 1 stops at the first, which is what the flag did before this field.
    argmax_patience: int = 1
    kl_prompt: str = "{} is a"
    context_template_starts: tuple[str, ...] = DEFAULT_STARTS
    context_template_length: int = 10
    # The fast path (cached prefix activations, logits at scored rows only) or the slow
    # reference (a full forward per step, one request at a time). Same result, see values.py.
    fast: bool = True

    def _problems(self, spec):
        n = spec.num_layers
        if not (self.v_loss_layer == -1 or 0 <= self.v_loss_layer < n):
            yield f"v_loss_layer={self.v_loss_layer} is not a layer of this {n}-layer model (or -1)"
        if not self.v_lr > 0:
            yield f"v_lr must be > 0, got {self.v_lr}"
        elif self.v_lr > 1e6:  # beyond float32 range Adam itself fails; far below, nothing edits
            yield f"v_lr must be <= 1e6, got {self.v_lr}"
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
        if not self.argmax_patience >= 1:
            yield f"argmax_patience must be >= 1, got {self.argmax_patience}"
        if self.kl_prompt.count("{}") != 1:
            yield f"kl_prompt must contain exactly one '{{}}', got {self.kl_prompt!r}"
        if not (isinstance(self.context_template_length, int) and self.context_template_length >= 1):
            yield f"context_template_length must be an int >= 1, got {self.context_template_length!r}"

    def loss_layer(self, spec) -> int:
        return spec.num_layers - 1 if self.v_loss_layer == -1 else self.v_loss_layer


def check_layers(layers, spec, what: str = "layers"):
    n = spec.num_layers
    if not layers:
        yield f"{what} must not be empty"
    for layer in layers:
        if not (_is_int(layer) and 0 <= layer < n):
            yield f"{what} contains {layer!r}, not a layer index of this {n}-layer model"
    if len(set(layers)) != len(layers):
        yield f"{what} has duplicates: {list(layers)}"


def check_config(cfg, spec) -> None:
    """Raise one ValueError naming every bad field of the config dataclass `cfg`: each field
    whose value does not fit its annotation (`type_problems`), then what `cfg._problems(spec)`,
    the config's own range and cross-field rules, finds among the others."""
    typed = type_problems(cfg)
    # The rules compare values (`v_lr > 0`), which a string cannot do, and would name a NaN a
    # second time: they read a copy whose ill-typed fields hold their defaults, so each bad
    # field is named once, by the problem it really has.
    sound = dataclasses.replace(cfg, **{name: _default(cfg, name) for name in typed})
    problems = [*typed.values(), *sound._problems(spec)]
    if problems:
        raise ValueError(f"invalid {type(cfg).__name__}: " + "; ".join(problems))


def type_problems(cfg) -> dict[str, str]:
    """Field name → why its value does not fit the field's annotation: `float` takes a finite
    int or float, `int` an int, `bool` True or False, `str` valid Unicode text, `tuple[X, ...]`
    a tuple or list of X. A bool is no number here although Python counts True as 1."""
    hints = typing.get_type_hints(type(cfg))
    out = {}
    for f in dataclasses.fields(cfg):
        problem = _misfit(f.name, hints[f.name], getattr(cfg, f.name))
        if problem is not None:
            out[f.name] = problem
    return out


def tuples_for_lists(cls, values: dict) -> dict:
    """Lists given for tuple fields become tuples, so that the frozen config stays hashable."""
    hints = typing.get_type_hints(cls)
    return {k: tuple(v) if isinstance(v, list) and typing.get_origin(hints.get(k)) is tuple
            else v for k, v in values.items()}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _got(value) -> str:
    return f"got {type(value).__name__} {value!r:.80}"


def _misfit(name: str, hint, value) -> str | None:
    if hint is bool:
        return None if isinstance(value, bool) else f"{name} must be True or False, {_got(value)}"
    if hint is int:
        return None if _is_int(value) else f"{name} must be an int, {_got(value)}"
    if hint is float:
        if not (_is_int(value) or isinstance(value, float)):
            return f"{name} must be a number, {_got(value)}"
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int beyond float range
            finite = False
        return None if finite else f"{name} must be finite, got {value!r:.80}"
    if hint is str:
        if not isinstance(value, str):
            return f"{name} must be a string, {_got(value)}"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{name} is not valid Unicode text (it holds a lone surrogate): {value!r:.80}"
        return None
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (tuple, list)):
            return f"{name} must be a list of {args[0].__name__}, {_got(value)}"
        for i, item in enumerate(value):
            problem = _misfit(f"{name}[{i}]", args[0], item)
            if problem is not None:
                return problem
    return None  # another annotation: the config's own rules judge it


def _default(cfg, name: str):
    f = next(f for f in dataclasses.fields(cfg) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()
