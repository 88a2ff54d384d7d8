"""The guard registry: names → guard classes, open through `register_guard` (see
`seqedit._registry`); guards keep their own state in their objects."""
from __future__ import annotations

from typing import Any

from .._registry import Registry

GUARDS = Registry("guard", {
    "prune": "seqedit.guards.prune:PruneGuard",
    "d4s": "seqedit.guards.d4s:D4SGuard",
    "sora": "seqedit.guards.sora:SoraGuard",
})


def register_guard(name: str, guard_cls: type) -> None:
    """Make `create(name, **options)` build `guard_cls(**options)`. A taken name raises."""
    GUARDS.check_name(name, "register_guard")
    if not callable(guard_cls):
        raise TypeError(f"register_guard({name!r}, ...): the guard class must be callable")
    GUARDS.add(name, guard_cls, "register_guard")


def available() -> list[str]:
    return list(GUARDS)


def create(name: str, **options: Any) -> Any:
    """A guard by registry name, e.g. `create("prune", mode="every", every=10)`."""
    return GUARDS.lookup(name)(**options)
