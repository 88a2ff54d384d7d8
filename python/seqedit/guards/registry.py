"""The guard registry: names → (guard class, config class), open through `register_guard`.

Like the evaluator registry it is the one piece of module-level state here: written only by
registration (a name is never replaced); guards keep their own state in their objects.
"""
from __future__ import annotations

import importlib
from typing import Any

_BUILTIN = {
    "prune": "seqedit.guards.prune:PruneGuard",
    "d4s": "seqedit.guards.d4s:D4SGuard",
    "sora": "seqedit.guards.sora:SoraGuard",
}
_REGISTERED: dict[str, type] = {}


def register_guard(name: str, guard_cls: type) -> None:
    """Make `create(name, **options)` build `guard_cls(**options)`. A taken name raises."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a guard name must be a non-empty str, got {name!r}")
    if name in _BUILTIN or name in _REGISTERED:
        raise ValueError(f"guard name {name!r} is already registered")
    if not callable(guard_cls):
        raise TypeError(f"register_guard({name!r}, ...): the guard class must be callable")
    _REGISTERED[name] = guard_cls


def available() -> list[str]:
    return sorted({*_BUILTIN, *_REGISTERED})


def guard_class(name: str) -> type:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        raise ValueError(f"unknown guard {name!r}; available: {available()}")
    module, attr = _BUILTIN[name].split(":")
    return getattr(importlib.import_module(module), attr)


def create(name: str, **options: Any) -> Any:
    """A guard by registry name, e.g. `create("prune", mode="every", every=10)`."""
    return guard_class(name)(**options)
