"""Names → classes, open to users: what the editor, guard and evaluator registries share.

A registry is the one kind of module-level state seqedit keeps. It is written only by
registration and a name, once taken, is never replaced, so whatever a ledger recorded by name
means the same thing for the life of the process. Built-ins may be given as "module:attr" and
are imported on first use (the evaluators' modules import lm-evaluation-harness).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any


class Registry(Mapping):
    """A read-only mapping of names (sorted on iteration) with `add` for registration."""

    def __init__(self, kind: str, builtin: Mapping[str, Any]):
        self.kind = kind
        self._builtin = dict(builtin)
        self._registered: dict[str, Any] = {}

    def check_name(self, name: str, caller: str) -> None:
        """Refuse a name `add` would refuse; `caller` names the public function in the errors."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{caller}: a {self.kind} name must be a non-empty str, got {name!r}")
        if name in self:
            raise ValueError(f"{caller}: {self.kind} name {name!r} is already registered")

    def add(self, name: str, value: Any, caller: str) -> None:
        self.check_name(name, caller)
        self._registered[name] = value

    def lookup(self, name: str) -> Any:
        """`self[name]`, or a ValueError listing what is available."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {sorted(self)}")
        return self[name]

    def __getitem__(self, name: str) -> Any:
        if name in self._registered:
            return self._registered[name]
        value = self._builtin[name]
        if isinstance(value, str):
            module, attr = value.split(":")
            value = getattr(importlib.import_module(module), attr)
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._registered or name in self._builtin

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*self._builtin, *self._registered}))

    def __len__(self) -> int:
        return len({*self._builtin, *self._registered})
