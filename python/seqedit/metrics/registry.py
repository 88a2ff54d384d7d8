"""The evaluator registry: names → evaluator classes, open to users through `register_evaluator`.

Built-in evaluators are named here by module path and imported on first use, so importing
`seqedit.metrics` does not import lm-evaluation-harness. The registry is the one piece of
module-level state in `metrics`: it is written only by registration (names are never replaced),
and evaluators keep all their own state in their objects.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

_BUILTIN = {
    "editing": "seqedit.metrics.editing:EditingEvaluator",
    "health": "seqedit.metrics.health:HealthEvaluator",
    "gora": "seqedit.metrics.gora:GoraEvaluator",
    "general": "seqedit.metrics.general:GeneralEvaluator",
    "safety": "seqedit.metrics.safety:SafetyEvaluator",
}
_REGISTERED: dict[str, Callable[..., Any]] = {}


def register_evaluator(name: str, factory: Callable[..., Any]) -> None:
    """Make `create(name, **options)` call `factory(**options)`; `factory` is usually an
    Evaluator class. A name already taken (built-in or registered) raises ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an evaluator name must be a non-empty str, got {name!r}")
    if name in _BUILTIN or name in _REGISTERED:
        raise ValueError(f"evaluator name {name!r} is already registered")
    if not callable(factory):
        raise TypeError(f"register_evaluator({name!r}, ...): factory must be callable")
    _REGISTERED[name] = factory


def available() -> list[str]:
    return sorted({*_BUILTIN, *_REGISTERED})


def _factory(name: str) -> Callable[..., Any]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        raise ValueError(f"unknown evaluator {name!r}; available: {available()}")
    module, attr = _BUILTIN[name].split(":")
    return getattr(importlib.import_module(module), attr)


def create(name: str, **options: Any) -> Any:
    """An evaluator by registry name, e.g. `create("general", tasks=["wikitext"], limit=200)`."""
    return _factory(name)(**options)
