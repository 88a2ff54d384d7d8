"""Reading record files (.json / .jsonl, optionally gzipped) and the data shipped in the package."""

from __future__ import annotations

import gzip
import json
import zlib
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


def read_bytes(source: Traversable | Path, label: str | None = None) -> bytes:
    """The file's bytes, decompressed when they are gzip. A damaged gzip stream is a ValueError
    naming the file (`label`, else its path) instead of the EOFError or zlib error beneath."""
    with source.open("rb") as handle:
        data = handle.read()
    # Sniff instead of trusting the name: a gzip file renamed without .gz still reads.
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as err:  # truncated, bad CRC or size, bad deflate
        raise ValueError(f"{label or source}: not a readable gzip file, it is truncated or "
                         f"corrupt ({err})") from None


def read_text(source: Traversable | Path, label: str | None = None) -> str:
    """The file as UTF-8 text (a leading byte-order mark is dropped)."""
    data = read_bytes(source, label)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raw, at = err.object, err.start  # positions count in what the codec saw
        line = raw.count(b"\n", 0, at) + 1
        column = at - raw.rfind(b"\n", 0, at)
        raise ValueError(f"{label or source}: not UTF-8 text at line {line}, column {column} "
                         f"(byte {raw[at]:#04x}: {err.reason})") from None


def has_record_suffix(name: str) -> bool:
    return name.lower().endswith(RECORD_SUFFIXES)


def read_records(source: Traversable | Path, label: str) -> list[Any]:
    """The list of records in a JSON array file or a JSON Lines file, named by its suffix."""
    name = source.name.lower()
    if not has_record_suffix(name):
        raise ValueError(f"{label}: expected one of {', '.join(RECORD_SUFFIXES)}, "
                         f"got {source.name!r}")
    text = read_text(source, label)
    if name.removesuffix(".gz").endswith(".jsonl"):
        return _json_lines(text, label)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{label}: invalid JSON at line {err.lineno}, column {err.colno}: "
                         f"{err.msg}") from None
    except (ValueError, RecursionError) as err:  # e.g. a huge integer, or nesting too deep
        raise ValueError(f"{label}: unreadable JSON: {_why(err)}") from None
    if not isinstance(data, list):
        raise ValueError(f"{label}: expected a JSON array of records, got a "
                         f"{type(data).__name__}")
    return data


def _json_lines(text: str, label: str) -> list[Any]:
    records, bad = [], []
    # Only "\n" ends a line: str.splitlines also splits at U+2028, U+0085 and others,
    # which JSON strings may hold unescaped.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines, e.g. a trailing one, are not records
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            bad.append(f"line {number}, column {err.colno}: {err.msg}")
        except (ValueError, RecursionError) as err:
            bad.append(f"line {number}: {_why(err)}")
    if bad:
        shown = bad[:_SHOWN_BAD_LINES]
        if len(bad) > len(shown):
            shown.append(f"... and {len(bad) - len(shown)} more")
        raise ValueError(f"{label}: {len(bad)} line(s) are not valid JSON:\n" + "\n".join(shown))
    return records


def _why(err: Exception) -> str:
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return str(err)
