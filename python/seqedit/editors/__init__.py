"""Editing methods. Each turns requests into a `Delta` without touching the model.

`EDITORS` maps a method name to (editor class, config class); `create(name, spec, **overrides)`
builds one with defaults derived from the model (`Config.for_model`).
"""
from __future__ import annotations

from types import MappingProxyType

from .alphaedit import AlphaEditConfig, AlphaEditEditor
from .base import Delta, EditContext, Editor, LayerDelta, SolveError, StatelessEditor
from .ft import FTConfig, FTEditor
from .memit import MemitConfig, MemitEditor
from .rome import RomeConfig, RomeEditor

EDITORS = MappingProxyType({
    "rome": (RomeEditor, RomeConfig),
    "memit": (MemitEditor, MemitConfig),
    "alphaedit": (AlphaEditEditor, AlphaEditConfig),
    "ft": (FTEditor, FTConfig),
})


def create(name: str, spec, **overrides) -> Editor:
    """An editor with its config's model-derived defaults, updated by `overrides`.

    `spec` is a ModelSpec; a model is accepted too and its spec is inferred.
    """
    if name not in EDITORS:
        raise ValueError(f"unknown editor {name!r}; available: {sorted(EDITORS)}")
    if not hasattr(spec, "num_layers"):
        from seqedit.models import spec as model_spec

        spec = model_spec(spec)
    editor_cls, config_cls = EDITORS[name]
    return editor_cls(config_cls.for_model(spec, **overrides))


__all__ = [
    "EDITORS", "create", "Delta", "LayerDelta", "EditContext", "Editor", "StatelessEditor",
    "SolveError",
    "RomeConfig", "RomeEditor", "MemitConfig", "MemitEditor", "AlphaEditConfig", "AlphaEditEditor",
    "FTConfig", "FTEditor",
]
