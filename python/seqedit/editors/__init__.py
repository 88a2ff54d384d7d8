"""Editing methods. Each turns requests into a `Delta` without touching the model.

`EDITORS` maps a method name to (editor class, config class), built-in or added with
`register_editor`; `create(name, spec, **overrides)` builds one with defaults derived from the
model (`Config.for_model`).
"""
from __future__ import annotations

import torch

from .alphaedit import AlphaEditConfig, AlphaEditEditor
from .base import Delta, EditContext, Editor, LayerDelta, SolveError, StatelessEditor
from .config import EditorConfig
from .encore import EncoreConfig, EncoreEditor
from .ft import FTConfig, FTEditor
from .memit import MemitConfig, MemitEditor
from .registry import EDITORS, register_editor
from .rome import RomeConfig, RomeEditor

register_editor("encore", EncoreEditor, EncoreConfig)


def create(name: str | Editor, spec, **overrides) -> Editor:
    """An editor with its config's model-derived defaults, updated by `overrides`.

    `name` is a key of `EDITORS`; an Editor instance is returned as it is (it carries its own
    config, so `overrides` are refused), as `EditSession(method=...)` takes either.
    `spec` is a ModelSpec; a model is accepted too and its spec is inferred.
    """
    if not isinstance(name, str):
        if isinstance(name, Editor):
            if overrides:
                raise TypeError(f"editor options {sorted(overrides)} apply only to a method "
                                f"name; configure the {type(name).__name__} instance itself")
            return name
        raise ValueError(f"editor must be a method name, one of {sorted(EDITORS)}, or an Editor;"
                         f" got {type(name).__name__} {name!r:.80}")
    if name not in EDITORS:
        raise ValueError(f"unknown editor {name!r}; available: {sorted(EDITORS)}")
    if not hasattr(spec, "num_layers"):
        if not isinstance(spec, torch.nn.Module):
            raise ValueError(f"spec must be a seqedit.models.ModelSpec or the model itself, got "
                             f"{type(spec).__name__} {spec!r:.80}")
        from seqedit.models import spec as model_spec

        spec = model_spec(spec)
    editor_cls, config_cls = EDITORS[name]
    return editor_cls(config_cls.for_model(spec, **overrides))


__all__ = [
    "EDITORS", "register_editor", "create", "EditorConfig", "Delta", "LayerDelta", "EditContext",
    "Editor", "StatelessEditor", "SolveError",
    "RomeConfig", "RomeEditor", "MemitConfig", "MemitEditor", "AlphaEditConfig", "AlphaEditEditor",
    "FTConfig", "FTEditor", "EncoreConfig", "EncoreEditor",
]
