"""The session's side of the Guard seam (`seqedit.guards`): building the declared guards,
their manifest entry, the context lent to them, and evaluation views.

Guards are given as objects, registry names, or `{"name": ..., **options}` dicts. The
manifest records each guard's name and config; a resumed session rebuilds them from it and
refuses guards that differ (another experiment). At most one guard solves the step itself
(D4S), and it comes first: the others act on what it returns.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..guards import GuardContext, GuardError
from ..guards import create as create_guard
from .checks import apply_delta
from .hashing import config_dict

_METHODS = ("guard", "commit", "revert")


def build_guards(guards: Any, editor: Any, spec: Any) -> list[Any]:
    if guards is None:
        return []
    if not isinstance(guards, (list, tuple)):
        raise GuardError(f"guards must be a list of guards, names or {{'name': ...}} dicts, got "
                         f"{type(guards).__name__}")
    out = []
    for i, item in enumerate(guards):
        if isinstance(item, str):
            item = create_guard(item)
        elif isinstance(item, dict):
            options = dict(item)
            name = options.pop("name", None)
            if not isinstance(name, str):
                raise GuardError(f"guards[{i}]: a dict guard needs a 'name' (one of the registry's)")
            item = create_guard(name, **options)
        missing = [m for m in ("name", "config", *_METHODS) if not hasattr(item, m)]
        if missing:
            raise GuardError(f"guards[{i}] ({type(item).__name__}) is not a Guard: it lacks "
                             f"{missing}")
        out.append(item)
    names = [g.name for g in out]
    if len(set(names)) != len(names):
        raise GuardError(f"a guard may be declared once; got {names}")
    solving = [i for i, g in enumerate(out) if _solves(g)]
    if len(solving) > 1 or solving and solving[0] != 0:
        raise GuardError(f"only one guard may solve the edit itself and it must come first; "
                         f"got {names} (solving: {[names[i] for i in solving]})")
    for g in out:
        g.bind(editor, spec)
    return out


def _solves(guard: Any) -> bool:
    hook = getattr(guard, "solves", None)
    return bool(hook()) if callable(hook) else False


def solver(guards: list[Any]) -> Any | None:
    return guards[0] if guards and _solves(guards[0]) else None


def manifest_entry(guards: list[Any]) -> list[dict[str, Any]]:
    return [{"name": g.name, "config": config_dict(g.config)} for g in guards]


def rebuild(recorded: list[dict[str, Any]], given: Any, editor: Any, spec: Any,
            directory: Any) -> list[Any]:
    """The session's guards on resume: rebuilt from the manifest, or the given ones when they
    are the recorded ones (same names, same configs, same order)."""
    if given is None:
        given = [{"name": g["name"], **g["config"]} for g in recorded]
    guards = build_guards(given, editor, spec)
    if manifest_entry(guards) != recorded:
        raise GuardError(f"{directory} was written with guards {recorded}; resuming with "
                         f"{manifest_entry(guards)} would mix two experiments (pass guards=None "
                         "to rebuild the recorded ones)")
    return guards


def context(model, spec, editor, edit_ctx, accumulated, base) -> GuardContext:
    return GuardContext(model, spec, editor, edit_ctx, accumulated, base.__getitem__,
                        base.unedited)


@contextlib.contextmanager
def viewed(model: torch.nn.Module, guards: list[Any], ctx: GuardContext) -> Iterator[bool]:
    """The model as the guards' evaluation views say (PRUNE post-hoc), restored bit-exactly
    after: the corrections go onto copies of the weights, the originals are swapped back."""
    corrections = [d for g in guards if (d := getattr(g, "view", lambda c: None)(ctx)) is not None
                   and d.layers]
    if not corrections:
        yield False
        return
    params = {d.name: model.get_parameter(d.name) for c in corrections for d in c.layers}
    live = {name: p.data for name, p in params.items()}
    try:
        for p in params.values():
            p.data = p.data.clone()
        for correction in corrections:
            apply_delta(model, correction, 1.0)
        yield True
    finally:
        for name, p in params.items():
            p.data = live[name]


def undo(guards: list[Any], delta: Any, ctx: GuardContext) -> Any | None:
    """The correction that rolls `delta` back when a guard says how (D4S re-solves without
    it), else None: the session subtracts `delta`. Two guards saying so cannot both be right."""
    found = [(g.name, d) for g in guards
             if (d := getattr(g, "rollback", lambda *a: None)(delta, ctx)) is not None]
    if len(found) > 1:
        raise GuardError(f"guards {[n for n, _ in found]} each give their own rollback of this "
                         "edit; at most one guard may")
    return found[0][1] if found else None
