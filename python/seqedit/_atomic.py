"""Durable and atomic file writes, shared by the session ledger, the PEFT export, the statistics
cache and the model cache.

Atomic means a reader (or the machine after a power cut) sees the old file or the complete new
one, never a mix: the bytes go to a temporary sibling, are fsync'd, renamed over the target, and
the directory is fsync'd so that the rename itself survives. Each write gets its own temporary
name, so two processes writing the same target never truncate each other's half-written file.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

# Not tempfile.mkstemp: it creates files 0600, which would make ledgers and exports unreadable to
# the other users who could read them before; this mode goes through the umask like open() does.
_MODE = 0o644


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the creation, removal or renaming of entries in `path` durable."""
    if os.name == "nt":  # pragma: no cover - directories cannot be opened there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file some other code wrote (and closed) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (signals, pipes, quotas); loop until all is out."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_durable(path: str | os.PathLike, data: bytes) -> None:
    """Create or overwrite `path` with `data` and fsync it (not atomic: see `write_atomic`)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _MODE)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably."""
    replace_atomic(path, lambda tmp: write_durable(tmp, data))


def replace_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Replace `path` atomically with what `write(tmp)` puts at a temporary sibling path, for
    writers that only take a file name (safetensors' `save_file`). The temporary file already
    exists (empty) when `write` is called; it is removed if `write` or the rename fails."""
    path = Path(path)
    tmp = _create_sibling(path)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _create_sibling(path: Path) -> Path:
    # Hidden and suffixed .tmp so that directory listings and globs for the real names skip it.
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _MODE))
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        return tmp
