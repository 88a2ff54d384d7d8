"""The editor registry: method names → (editor class, config class), open through
`register_editor` (see `seqedit._registry`); editors keep their own state in their objects.
`EDITORS` is a read-only live view of the built-in and the registered editors."""
from __future__ import annotations

from types import MappingProxyType

from .._registry import Registry
from .alphaedit import AlphaEditConfig, AlphaEditEditor
from .ft import FTConfig, FTEditor
from .memit import MemitConfig, MemitEditor
from .rome import RomeConfig, RomeEditor

_EDITORS = Registry("editor", {
    "rome": (RomeEditor, RomeConfig),
    "memit": (MemitEditor, MemitConfig),
    "alphaedit": (AlphaEditEditor, AlphaEditConfig),
    "ft": (FTEditor, FTConfig),
})
EDITORS = MappingProxyType(_EDITORS)


def register_editor(name: str, editor_cls: type, config_cls: type) -> None:
    """Make `create(name, spec, **overrides)` build `editor_cls(config_cls.for_model(spec,
    **overrides))` and let `EditSession.resume` rebuild it with `config_cls.from_dict`. A name
    already taken (built-in or registered) raises ValueError."""
    _EDITORS.check_name(name, "register_editor")
    if not isinstance(editor_cls, type) or getattr(editor_cls, "name", None) != name:
        # The ledger records `editor.name`; resume looks that name up here.
        raise TypeError(f"register_editor({name!r}, ...): editor_cls must be a class whose `name` "
                        f"is {name!r}, got {editor_cls!r}")
    missing = [m for m in ("for_model", "from_dict") if not callable(getattr(config_cls, m, None))]
    if missing:
        raise TypeError(f"register_editor({name!r}, ...): config class {config_cls!r} has no "
                        f"{', '.join(missing)} (seqedit.editors.EditorConfig gives from_dict)")
    _EDITORS.add(name, (editor_cls, config_cls), "register_editor")
