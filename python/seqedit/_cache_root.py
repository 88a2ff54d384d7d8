"""Where seqedit keeps what it can recompute (converted models, key statistics)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$SEQEDIT_CACHE`, else `~/.cache/seqedit`; read on every call so a changed environment
    (tests, CI) takes effect without a restart."""
    return Path(os.environ.get("SEQEDIT_CACHE") or Path.home() / ".cache" / "seqedit").expanduser()
