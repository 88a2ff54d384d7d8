"""Reading record files (.json / .jsonl, optionally gzipped) and the data shipped in the package."""

from __future__ import annotations

import gzip
import json
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the module moved between Python 3.10 and 3.11
    from importlib.resources.abc import Traversable

RECORD_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
_GZIP_MAGIC = b"\x1f\x8b"
_SHOWN_BAD_LINES = 20


def packaged(relative: str) -> Traversable:
    """A file under `seqedit/data/files/`, wherever the package is installed."""
    node = files("seqedit.data") / "files"
    for part in relative.split("/"):  # Traversable.joinpath takes one part on Python 3.10
        node = node / part
    return node


def read_bytes(source: Traversable | Path) -> bytes:
    with source.open("rb") as handle:
        data = handle.read()
    # Sniff instead of trusting the name: a gzip file renamed without .gz still reads.
    return gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data


def read_text(source: Traversable | Path) -> str:
    return read_bytes(source).decode("utf-8-sig")


def has_record_suffix(name: str) -> bool:
    return name.lower().endswith(RECORD_SUFFIXES)


def read_records(source: Traversable | Path, label: str) -> list[Any]:
    """The list of records in a JSON array file or a JSON Lines file, named by its suffix."""
    name = source.name.lower()
    if not has_record_suffix(name):
        raise ValueError(f"{label}: expected one of {', '.join(RECORD_SUFFIXES)}, "
                         f"got {source.name!r}")
    text = read_text(source)
    if name.removesuffix(".gz").endswith(".jsonl"):
        return _json_lines(text, label)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{label}: invalid JSON at line {err.lineno}, column {err.colno}: "
                         f"{err.msg}") from None
    if not isinstance(data, list):
        raise ValueError(f"{label}: expected a JSON array of records, got a "
                         f"{type(data).__name__}")
    return data


def _json_lines(text: str, label: str) -> list[Any]:
    records, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines, e.g. a trailing one, are not records
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            bad.append(f"line {number}, column {err.colno}: {err.msg}")
    if bad:
        shown = bad[:_SHOWN_BAD_LINES]
        if len(bad) > len(shown):
            shown.append(f"... and {len(bad) - len(shown)} more")
        raise ValueError(f"{label}: {len(bad)} line(s) are not valid JSON:\n" + "\n".join(shown))
    return records
