"""The session directory: an append-only JSONL ledger plus one safetensors file per applied edit.

Layout (format version 1)::

    manifest.json             who/what: method, config, model identity, base-weight fingerprints
    ledger.jsonl              one JSON object per line, only ever appended to: "edit",
                              "rollback" and "eval" lines (an evaluator's result at a step)
    deltas/<edit_id>.safetensors   the factors (and editor keys) of each applied edit

The commit point of an edit or a rollback is its ledger line reaching the disk (write + fsync).
A delta file is made durable (temp file, fsync, rename, fsync of the directory) before the line
that names it is written, so a committed line never points at a missing file; a delta file that
no line names is debris from a crash and is deleted when the directory is reopened. A line cut
short by a crash has no trailing newline and is cut off on reopen: it never committed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch

from .._atomic import fsync_dir, write_all, write_atomic, write_durable
from ..editors.base import Delta
from .hashing import canonical_json

try:  # advisory lock: one writer per directory; absent on Windows, where we go without
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger("seqedit.session")

FORMAT = "seqedit-session"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LEDGER = "ledger.jsonl"
DELTAS = "deltas"


class LedgerError(RuntimeError):
    """The session directory is missing, corrupt, locked, or does not fit the given model."""


@dataclass
class Entry:
    """What the session keeps in memory per edit line: enough to skip, replay and roll back."""

    edit_id: int
    status: str  # "applied" | "refused"
    method: str
    request_keys: list[str]
    case_ids: list[Any]
    delta: dict[str, Any] | None
    rolled_back: bool = False

    @property
    def live(self) -> bool:
        return self.status == "applied" and not self.rolled_back


def delta_file_name(edit_id: int) -> str:
    return f"{edit_id:06d}.safetensors"


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise LedgerError(f"{root} is not a seqedit session directory: no {MANIFEST} "
                          "(an interrupted save() writes the manifest last)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise LedgerError(f"{path}: not a seqedit session manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise LedgerError(f"{path}: format version {manifest['format_version']} is newer than "
                          f"this seqedit understands ({FORMAT_VERSION}); upgrade seqedit")
    return manifest


class Ledger:
    """Owns one session directory: appends lines, stores deltas, indexes what is committed."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.entries: dict[int, Entry] = {}
        self.fingerprints: dict[str, dict[str, Any]] = dict(manifest.get("base_fingerprint", {}))
        self.stats_layers: set[int] = set()
        self.memo: dict[str, Any] = {}  # canonical key -> [key, value], see replay.portable_memo
        self._processed: dict[str, list[int]] = {}  # request key -> edit steps that had it
        self._evals: dict[tuple[int, str], dict[str, Any]] = {}  # (state, evaluator) -> line
        self.state = 0  # edit and rollback lines so far: which model an eval line measured
        self._size = 0
        self._broken = False
        self._fd = -1
        self._closer = None

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, manifest: dict[str, Any]) -> "Ledger":
        root = Path(root)
        if (root / MANIFEST).exists() or (root / LEDGER).exists():
            raise LedgerError(f"{root} already holds a session; continue it with "
                              "EditSession.resume(dir, model, tokenizer) or pick another directory")
        (root / DELTAS).mkdir(parents=True, exist_ok=True)
        ledger = cls(root, manifest)
        write_atomic(root / MANIFEST, json.dumps(manifest, indent=1).encode())
        ledger._open_fd(create=True)
        fsync_dir(root)
        return ledger

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Ledger":
        """Open an existing directory for appending, repairing what a crash may have left."""
        root = Path(root)
        ledger = cls(root, read_manifest(root))
        # create() writes the manifest first: a crash right after it leaves no ledger file,
        # which is an empty ledger, not an error.
        ledger._open_fd(create=not (root / LEDGER).exists())
        try:
            ledger._load()
        except BaseException:
            ledger.close()
            raise
        return ledger

    def _load(self) -> None:
        (self.root / DELTAS).mkdir(exist_ok=True)
        where = self.root / LEDGER
        data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        committed = data[: data.rfind(b"\n") + 1]
        if len(committed) < len(data):
            log.warning("%s: dropping a ledger line cut short by a crash (%d bytes); that step "
                        "never committed", where, len(data) - len(committed))
            os.ftruncate(self._fd, len(committed))
            os.fsync(self._fd)
        for number, line in enumerate(committed.split(b"\n")[:-1], 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise LedgerError(f"{where}:{number}: not JSON ({err})") from None
            self._check(record, where=f"{where}:{number}")
            self._index(record)
        self._size = len(committed)
        self._remove_debris()

    def _open_fd(self, *, create: bool) -> None:
        flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT | os.O_EXCL if create else 0)
        path = self.root / LEDGER
        fd = os.open(path, flags, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LedgerError(f"{path} is in use by another open session (in this process "
                                  "or another); close that one first") from None
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()  # closing the descriptor releases the lock
            self._fd = -1

    def _remove_debris(self) -> None:
        named = {Path(e.delta["file"]).name for e in self.entries.values() if e.delta}
        for path in (self.root / DELTAS).iterdir():
            if path.name not in named:
                log.info("removing %s: left by an edit that never committed", path)
                path.unlink()
        for entry in self.entries.values():
            if entry.delta and not (self.root / entry.delta["file"]).is_file():
                raise LedgerError(f"{self.root}: the ledger line of edit {entry.edit_id} names "
                                  f"{entry.delta['file']}, which is missing")

    # -- indexing --------------------------------------------------------------------------
    def _check(self, record: dict[str, Any], *, where: str) -> None:
        kind, edit_id = record.get("type"), record.get("edit_id")
        if kind == "edit" and edit_id != self.next_edit_id:
            raise LedgerError(f"{where}: edit_id {edit_id}, expected {self.next_edit_id}")
        if kind == "rollback" and not (edit_id in self.entries and self.entries[edit_id].live):
            raise LedgerError(f"{where}: rollback of edit {edit_id}, which is not live")
        if kind == "eval":
            name = record.get("evaluator")
            if not (record.get("state") == self.state and record.get("step") == self.next_edit_id
                    and isinstance(name, str) and isinstance(record.get("result"), dict)):
                raise LedgerError(f"{where}: an eval line needs evaluator, result, step "
                                  f"{self.next_edit_id} and state {self.state} (the model it "
                                  "measured is the one the lines before it describe)")
            if (self.state, name) in self._evals:
                raise LedgerError(f"{where}: a second {name!r} evaluation of the same model "
                                  f"(step {self.next_edit_id}, state {self.state})")
        elif kind not in ("edit", "rollback"):
            raise LedgerError(f"{where}: unknown line type {kind!r} (written by a newer seqedit?)")

    def _index(self, record: dict[str, Any]) -> None:
        kind, edit_id = record["type"], record.get("edit_id")
        if kind == "eval":
            self._evals[(record["state"], record["evaluator"])] = record
            return
        self.state += 1
        if kind == "edit":
            self.entries[edit_id] = Entry(edit_id, record["status"], record["method"],
                                          list(record["request_keys"]),
                                          [r.get("case_id") for r in record["requests"]],
                                          record.get("delta"))
            for key in record["request_keys"]:
                self._processed.setdefault(key, []).append(edit_id)
            self.fingerprints.update(record.get("base_fingerprint") or {})
            self.stats_layers.update(record.get("stats_layers") or [])
            for key, value in record.get("memo") or []:
                self.memo[canonical_json(key)] = [key, value]
        else:
            self.entries[edit_id].rolled_back = True

    @property
    def next_edit_id(self) -> int:
        return len(self.entries)

    def evaluation(self, evaluator: str) -> dict[str, Any] | None:
        """The committed `eval` line of `evaluator` on the model as the ledger now describes
        it (no edit or rollback since), or None."""
        return self._evals.get((self.state, evaluator))

    def evaluations(self) -> list[dict[str, Any]]:
        """Every committed `eval` line, in ledger order."""
        return list(self._evals.values())

    def processed(self, key: str) -> list[int]:
        """Edit steps (applied or refused) whose requests included this exact request."""
        return self._processed.get(key, [])

    def ensure_writable(self) -> None:
        if self._fd < 0:
            raise LedgerError(f"{self.root}: the session is closed")
        if self._broken:
            raise LedgerError(f"{self.root}: an earlier failed write could not be undone, so "
                              "memory and disk may disagree; reopen the directory with "
                              "EditSession.resume (the directory is the truth)")

    def live_entries(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.live]

    # -- writing ---------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        """Write one line and fsync it: the commit point. On any failure the line is cut off
        again, so the ledger never holds a line the caller believes failed."""
        self.ensure_writable()
        self._check(record, where=f"{self.root / LEDGER} (appending)")
        data = (json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n").encode()
        start = self._size
        try:
            write_all(self._fd, data)
            os.fsync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                self._broken = True  # the file may now hold a line memory does not have
            raise
        self._size = start + len(data)
        self._index(record)

    def write_delta(self, edit_id: int, delta: Delta) -> dict[str, Any]:
        """Store the factors durably; return the ledger's description of the file."""
        self.ensure_writable()
        name = delta_file_name(edit_id)
        # Own copies: an editor may hand out views sharing storage (keys = factors), which
        # safetensors refuses to write.
        tensors = {key: t.clone() for key, t in delta.to_tensors().items()}
        blob = safetensors.torch.save(tensors, metadata={
            "format": "seqedit-delta", "edit_id": str(edit_id), "method": delta.method})
        write_atomic(self.root / DELTAS / name, blob)
        return {
            "file": f"{DELTAS}/{name}",
            "sha256": hashlib.sha256(blob).hexdigest(),
            "bytes": len(blob),
            "layers": [{"name": d.name, "rank": d.rank, "transposed": d.transposed,
                        "shape": [d.u.shape[0], d.v.shape[0]]} for d in delta.layers],
            "keys": sorted(delta.keys),
        }

    def load_delta(self, entry: Entry) -> Delta:
        path = self.root / entry.delta["file"]
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != entry.delta["sha256"]:
            raise LedgerError(f"{path}: checksum differs from the ledger's; the file was changed")
        transposed = {d["name"]: d["transposed"] for d in entry.delta["layers"]}
        return Delta.from_tensors(entry.method, safetensors.torch.load(blob), transposed)

    def copy_to(self, dest: Path, manifest: dict[str, Any]) -> None:
        """A self-contained copy (every delta the ledger names); the manifest goes last, so a
        copy interrupted half-way is recognisably incomplete."""
        if (dest / MANIFEST).exists() or (dest / LEDGER).exists():
            raise LedgerError(f"{dest} already holds a session; save into a new directory")
        (dest / DELTAS).mkdir(parents=True, exist_ok=True)
        for entry in self.entries.values():
            if entry.delta:
                blob = (self.root / entry.delta["file"]).read_bytes()
                write_durable(dest / entry.delta["file"], blob)
        write_durable(dest / LEDGER, os.pread(self._fd, self._size, 0))
        fsync_dir(dest / DELTAS)
        write_atomic(dest / MANIFEST, json.dumps(manifest, indent=1).encode())
