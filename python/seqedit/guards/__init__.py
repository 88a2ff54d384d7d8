"""Guards: damage control applied to each edit (see `guards.base`). Registry and built-ins."""
from __future__ import annotations

from .base import Guard, GuardBase, GuardContext, GuardError, record
from .registry import available, create, register_guard

__all__ = ["Guard", "GuardBase", "GuardContext", "GuardError", "record", "available", "create",
           "register_guard"]
