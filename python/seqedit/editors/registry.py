"""The editor registry: method names → (editor class, config class), open through `register_editor`.

The registry is the one piece of module-level state in `editors`: it is written only by
registration (names are never replaced), and editors keep all their own state in their objects.
`EDITORS` is a read-only live view of the built-in and the registered editors.
"""
from __future__ import annotations

from collections import ChainMap
from types import MappingProxyType

from .alphaedit import AlphaEditConfig, AlphaEditEditor
from .ft import FTConfig, FTEditor
from .memit import MemitConfig, MemitEditor
from .rome import RomeConfig, RomeEditor

_BUILTIN: dict[str, tuple[type, type]] = {
    "rome": (RomeEditor, RomeConfig),
    "memit": (MemitEditor, MemitConfig),
    "alphaedit": (AlphaEditEditor, AlphaEditConfig),
    "ft": (FTEditor, FTConfig),
}
_REGISTERED: dict[str, tuple[type, type]] = {}
EDITORS = MappingProxyType(ChainMap(_REGISTERED, _BUILTIN))


def register_editor(name: str, editor_cls: type, config_cls: type) -> None:
    """Make `create(name, spec, **overrides)` build `editor_cls(config_cls.for_model(spec,
    **overrides))` and let `EditSession.resume` rebuild it with `config_cls.from_dict`. A name
    already taken (built-in or registered) raises ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an editor name must be a non-empty str, got {name!r}")
    if name in EDITORS:
        raise ValueError(f"editor name {name!r} is already registered")
    if not isinstance(editor_cls, type) or getattr(editor_cls, "name", None) != name:
        # The ledger records `editor.name`; resume looks that name up here.
        raise TypeError(f"register_editor({name!r}, ...): editor_cls must be a class whose `name` "
                        f"is {name!r}, got {editor_cls!r}")
    missing = [m for m in ("for_model", "from_dict") if not callable(getattr(config_cls, m, None))]
    if missing:
        raise TypeError(f"register_editor({name!r}, ...): config class {config_cls!r} has no "
                        f"{', '.join(missing)} (seqedit.editors.EditorConfig gives from_dict)")
    _REGISTERED[name] = (editor_cls, config_cls)
