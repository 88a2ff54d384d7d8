"""seqedit._atomic: replacing a file leaves the old or the new bytes, and no debris."""
from __future__ import annotations

import os
import stat

import pytest

from seqedit import _atomic


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    _atomic.write_atomic(path, b"old")
    _atomic.write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_files_are_created_through_the_umask_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        _atomic.write_atomic(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_concurrent_writers_get_distinct_temporaries(tmp_path):
    path, seen = tmp_path / "f", []

    def outer(tmp):
        seen.append(tmp)
        # A second writer of the same target starts before the first one has renamed.
        _atomic.replace_atomic(path, lambda inner: (seen.append(inner), inner.write_bytes(b"2")))
        tmp.write_bytes(b"1")

    _atomic.replace_atomic(path, outer)
    assert seen[0] != seen[1] and path.read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "f"
    _atomic.write_atomic(path, b"old")

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _atomic.replace_atomic(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
