"""The Guard seam: damage control between an editor's proposal and the weights.

Per step the session asks the editor for a Delta (or, for a guard that solves the step itself —
D4S — asks that guard), then passes it through every guard in the declared order:

    delta = guard.guard(delta, requests, ctx)        # may return it, add to it, or replace it

The Delta the last guard returns is what the session checks, writes and applies; it carries in
`info["guards"]` each guard's record and in `state` the tensors a guard needs to rebuild its own
state, so `commit`/`revert` (fed with the applied Delta, in ledger order, also on resume) keep
guard state exactly where the ledger says. A guard that must undo an edit otherwise than by
subtracting it (D4S re-solves without it) returns that correction from `rollback`; the session
records it in the ledger. A guard that acts only on what is measured (PRUNE post-hoc) returns a
temporary correction from `view`, applied while evaluators run and removed bit-exactly after.

Guards import editors, ops and models, never the session; the session lends them a
`GuardContext`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from ..editors.accumulated import AccumulatedDelta
from ..editors.base import Delta, EditContext


class GuardError(ValueError):
    """A guard that cannot work with this editor or model, or a bad guard configuration:
    raised when the session starts, before any weight moves."""


class GuardConfig:
    """Base of the guard config dataclasses: their JSON form (what the manifest records and
    `resume` rebuilds the guard from). Subclasses set `guard`, the registry name."""

    guard = "guard"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _json_form(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GuardError(f"{cls.guard} has no option(s) {unknown}; options: {sorted(known)}")
        return cls(**data)


def _json_form(value: Any) -> Any:
    """A config value as the manifest holds it: a value's own `to_dict` form where it has one
    (EditRequest probes, read back by the config), containers item by item."""
    if isinstance(value, (list, tuple)):
        return type(value)(_json_form(v) for v in value)
    own = getattr(value, "to_dict", None)
    return own() if callable(own) else value


@dataclass
class GuardContext:
    """What the session lends a guard at a step.

    accumulated: ΔW of the live edits per weight (factored). base_weight(name): W₀.
    unedited(): context manager under which the edited weights are W₀ (pointer swap).
    edit_ctx: the editor's EditContext (statistics, memo). step: the edit id being made.
    """

    model: torch.nn.Module
    spec: Any
    editor: Any
    edit_ctx: EditContext
    accumulated: AccumulatedDelta
    base_weight: Callable[[str], torch.Tensor]
    unedited: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    step: int = 0
    memo: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Guard(Protocol):
    name: str
    config: Any

    def bind(self, editor: Any, spec: Any) -> None:
        """Check the guard can work with `editor` on this model; GuardError otherwise."""

    def guard(self, delta: Delta, requests: list, ctx: GuardContext) -> Delta:
        """The Delta to apply instead of `delta`."""

    def commit(self, delta: Delta) -> None:
        """`delta` (as applied, guard records included) is now in the model."""

    def revert(self, delta: Delta, undo: Delta | None = None) -> None:
        """`delta` was rolled back (by applying `undo`, when the guard's `rollback` gave one)."""


class GuardBase:
    """Defaults for the optional parts of a guard: no solving, no lookahead, plain rollback,
    no evaluation view, no state."""

    name = "guard"
    config: Any = None

    def bind(self, editor: Any, spec: Any) -> None:
        return None

    def solves(self) -> bool:
        """True for a guard that computes the step's Delta itself (instead of the editor)."""
        return False

    def solve(self, requests: list, ctx: GuardContext) -> Delta:
        raise NotImplementedError

    def plan(self, requests: list) -> None:
        """The requests the session is about to edit, in order (for batched work ahead)."""

    def guard(self, delta: Delta, requests: list, ctx: GuardContext) -> Delta:
        return delta

    def rollback(self, delta: Delta, ctx: GuardContext) -> Delta | None:
        """The Delta that undoes `delta` (applied with +1), or None: subtract it."""
        return None

    def view(self, ctx: GuardContext) -> Delta | None:
        """A temporary correction under which evaluators measure the model, or None."""
        return None

    def commit(self, delta: Delta) -> None:
        return None

    def revert(self, delta: Delta, undo: Delta | None = None) -> None:
        return None


def require_plain_memit(guard: str, editor: Any) -> None:
    """D4S and SORA solve MEMIT's least squares themselves: refuse any other editor, and MEMIT
    options their solve would silently drop (ENCORE's norm term, NAS anchors)."""
    from ..editors.memit import MemitEditor

    if not isinstance(editor, MemitEditor):
        raise GuardError(f"{guard} solves MEMIT's least squares itself; it needs MEMIT's "
                         f"key/residual form (method 'memit'), not "
                         f"{getattr(editor, 'name', type(editor).__name__)!r}")
    cfg = editor.config
    dropped = [f for f, off in (("update_norm_weight", 0.0), ("nas_anchor", ())) if
               getattr(cfg, f, off) != off]
    if dropped:
        raise GuardError(f"{guard} does its own solve, which does not apply the editor's "
                         f"{', '.join(dropped)}; use plain MEMIT with {guard}")


def record(delta: Delta, name: str, entry: dict[str, Any]) -> None:
    """Put a guard's JSON-able record for this step into `delta.info["guards"][name]`."""
    delta.info.setdefault("guards", {})[name] = entry
