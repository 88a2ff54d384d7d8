"""The session directory: an append-only JSONL ledger plus one safetensors file per applied edit.

Layout (format version 2)::

    manifest.json             who/what: method, config, seed, model identity, base fingerprints,
                              session_id; sealed by its own checksum
    ledger.jsonl              one JSON object per line, only ever appended to: "edit",
                              "rollback" and "eval" lines (an evaluator's result at a step), each
                              with a checksum chained to the line before (`integrity`)
    deltas/<edit_id>.safetensors   the factors (and editor keys) of each applied edit
    deltas/<edit_id>.rollback.safetensors   the correction that rolled an edit back, where a
                              guard undoes it otherwise than by subtraction (D4S re-solves)

Creation takes the directory's lock first (the ledger file, created exclusively and locked) and
writes the manifest after, so two processes creating one directory cannot both win. The commit
point of an edit or a rollback is its ledger line reaching the disk (write + fsync). A delta file
is made durable (temp file, fsync, rename, fsync of the directory) before the line that names it
is written, so a committed line never points at a missing file. Reopening repairs only what a
crash can leave: a line cut short (no trailing newline; it never committed) and the delta file of
the next edit id (or the rollback correction of a live edit) that no line names. Anything else that disagrees — other unnamed delta files, a
missing ledger beside a manifest, a broken checksum — is a LedgerError and nothing is deleted.
Format 1 directories (no checksums) still open, with a warning; lines appended to them are
chained from then on.
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

from .. import _safetensors_bytes as safetensors_bytes
from .._atomic import fsync_dir, write_all, write_atomic, write_durable
from ..editors.base import Delta
from .hashing import canonical_json
from .integrity import chain_root, follow, manifest_problem, seal_line, seal_manifest

try:  # advisory lock: one writer per directory; absent on Windows, where we go without
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger("seqedit.session")

FORMAT = "seqedit-session"
FORMAT_VERSION = 2
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
    config_hash: str | None = None
    seqedit_version: str | None = None
    rolled_back: bool = False

    @property
    def live(self) -> bool:
        return self.status == "applied" and not self.rolled_back


def _create_exclusive(path: Path, data: bytes) -> None:
    """Write `path` durably under a unique temporary name, then link it into place: the link
    fails if `path` exists, so no writer ever replaces another's file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    write_durable(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise LedgerError(f"{path} appeared while this session was being created (another "
                          "process created a session here)") from None
    finally:
        tmp.unlink()


def delta_file_name(edit_id: int, *, rollback: bool = False) -> str:
    return f"{edit_id:06d}{'.rollback' if rollback else ''}.safetensors"


def read_delta(root: Path, described: dict[str, Any], method: str) -> Delta:
    """The delta file a ledger line describes (`record["delta"]`), checked against its sha256;
    reads only, so it is safe on a session another process is writing."""
    path = Path(root) / described["file"]
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != described["sha256"]:
        raise LedgerError(f"{path}: checksum differs from the ledger's; the file was changed")
    transposed = {d["name"]: d["transposed"] for d in described["layers"]}
    return Delta.from_tensors(method, safetensors.torch.load(blob), transposed)


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        what = ("its creation was interrupted before the manifest was written: nothing to resume"
                if _abandoned(root) else "an interrupted save() writes the manifest last")
        raise LedgerError(f"{root} is not a seqedit session directory: no {MANIFEST} ({what})")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LedgerError(f"{path}: not a JSON manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LedgerError(f"{path}: not a seqedit session manifest")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LedgerError(f"{path}: format version {version!r} is newer than this seqedit "
                          f"understands ({FORMAT_VERSION}); upgrade seqedit")
    if is_legacy(manifest):
        log.warning("%s: format 1, written before seqedit checked integrity; its history is "
                    "not verified (lines appended now are)", path)
    else:
        problem = manifest_problem(manifest)
        if problem:
            raise LedgerError(f"{path}: {problem}")
    return manifest


def parse_line(line: bytes, where: str, *, may_be_torn: bool = False) -> dict[str, Any] | None:
    """One ledger line as a JSON object; LedgerError naming `where` (file:line) otherwise — or
    None for a line that is not JSON when `may_be_torn` (a reader's view of the last line)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        if may_be_torn:
            return None
        raise LedgerError(f"{where}: not JSON ({err})") from None
    if not isinstance(record, dict):
        raise LedgerError(f"{where}: a {type(record).__name__}, not a JSON object")
    return record


def is_legacy(manifest: dict[str, Any]) -> bool:
    """Format 1: written before manifests and lines carried checksums."""
    return manifest.get("format_version", 0) < 2


def _abandoned(root: Path) -> bool:
    """A directory whose creation died after taking the lock: an empty ledger and nothing else."""
    ledger, deltas = root / LEDGER, root / DELTAS
    return (ledger.is_file() and ledger.stat().st_size == 0 and not (root / MANIFEST).exists()
            and (not deltas.exists() or not any(deltas.iterdir())))


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
        self._history: list[tuple[str, int]] = []  # ("edit" | "rollback", edit_id) that moved W
        self.undo: dict[int, dict[str, Any]] = {}  # edit id -> its rollback's correction file
        self.head = chain_root(manifest)  # the chain value the next line must follow
        self._size = 0
        self._broken = False
        self._fd = -1
        self._closer = None

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, manifest: dict[str, Any]) -> "Ledger":
        """Claim `root` (the locked ledger file first), then write the sealed manifest."""
        root = Path(root)
        if (root / MANIFEST).exists():
            raise LedgerError(f"{root} already holds a session; continue it with "
                              "EditSession.resume(dir, model, tokenizer) or pick another directory")
        root.mkdir(parents=True, exist_ok=True)
        ledger = cls(root, seal_manifest(manifest))
        try:
            ledger._open_fd(create=True)
        except FileExistsError:
            # Another creator got here first — or died before writing the manifest.
            if not _abandoned(root):
                raise LedgerError(f"{root} already holds a session (or another process is "
                                  "creating one); continue it with EditSession.resume or pick "
                                  "another directory") from None
            ledger._open_fd(create=False)
        try:
            if os.fstat(ledger._fd).st_size or (root / MANIFEST).exists():
                raise LedgerError(f"{root} already holds a session (another process created it "
                                  "first); continue it with EditSession.resume")
            (root / DELTAS).mkdir(exist_ok=True)
            _create_exclusive(root / MANIFEST, json.dumps(ledger.manifest, indent=1).encode())
            fsync_dir(root)
        except BaseException:
            ledger.close()
            raise
        return ledger

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Ledger":
        """Open an existing directory for appending, repairing what a crash may have left."""
        root = Path(root)
        ledger = cls(root, read_manifest(root))
        if not (root / LEDGER).is_file():
            # create() makes the ledger before the manifest: it was lost, not never written.
            raise LedgerError(f"{root}: the manifest is there but {LEDGER} is missing; the "
                              "session's history is gone (restore the file; nothing was changed)")
        ledger._open_fd(create=False)
        try:
            ledger._load()
        except BaseException:
            ledger.close()
            raise
        return ledger

    def _load(self) -> None:
        """Read and check everything first; repair (cut a torn last line, remove the next
        edit's orphan delta) only once nothing else is wrong, so a refusal changes nothing."""
        where = self.root / LEDGER
        data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        committed = data[: data.rfind(b"\n") + 1]
        for number, line in enumerate(committed.split(b"\n")[:-1], 1):
            record = parse_line(line, f"{where}:{number}")
            self._follow(record, line, where=f"{where}:{number}")
            self._check(record, where=f"{where}:{number}")
            self._index(record)
        orphan = self._orphan()
        if len(committed) < len(data):
            log.warning("%s: dropping a ledger line cut short by a crash (%d bytes); that step "
                        "never committed", where, len(data) - len(committed))
            os.ftruncate(self._fd, len(committed))
            os.fsync(self._fd)
        self._size = len(committed)
        (self.root / DELTAS).mkdir(exist_ok=True)
        if orphan is not None:
            log.warning("removing %s: a delta whose ledger line was never written (the run "
                        "stopped inside that step)", orphan)
            orphan.unlink()
            fsync_dir(self.root / DELTAS)

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
                                  "or another): the directory already holds a session; close "
                                  "that one first") from None
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._closer is not None:
            self._closer()  # closing the descriptor releases the lock
            self._fd = -1

    def _orphan(self) -> Path | None:
        """The one file a crash can leave (the next edit's delta, whose line was never
        written), if it is there; LedgerError when anything else disagrees with the ledger."""
        files = [e.delta for e in self.entries.values() if e.delta] + list(self.undo.values())
        named = {Path(f["file"]).name for f in files}
        folder = self.root / DELTAS
        present = list(folder.iterdir()) if folder.is_dir() else []
        stray = sorted(p.name for p in present if p.name not in named)
        # A crash inside a step leaves its delta; inside a rollback, its correction.
        possible = {delta_file_name(self.next_edit_id)} | {
            delta_file_name(e.edit_id, rollback=True) for e in self.entries.values() if e.live}
        orphan = next((name for name in stray if name in possible), None)
        others = [name for name in stray if name != orphan]
        if others:
            raise LedgerError(
                f"{self.root}: {len(others)} delta file(s) that no ledger line names "
                f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); the ledger "
                "is missing lines or the files come from elsewhere. Nothing was deleted: restore "
                f"{LEDGER} or move those files away")
        missing = [f["file"] for f in files if not (self.root / f["file"]).is_file()]
        if missing:
            raise LedgerError(f"{self.root}: the ledger names delta files that are missing "
                              f"({', '.join(missing[:10])}); nothing was changed")
        return folder / orphan if orphan is not None else None

    def _follow(self, record: dict[str, Any], raw: bytes, *, where: str) -> None:
        try:
            self.head = follow(self.head, record, raw, legacy=is_legacy(self.manifest))
        except ValueError as err:
            raise LedgerError(f"{where}: {err}; nothing was changed") from None

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
                                          record.get("delta"), record.get("config_hash"),
                                          record.get("seqedit_version"))
            for key in record["request_keys"]:
                self._processed.setdefault(key, []).append(edit_id)
            if record["status"] == "applied":
                self._history.append(("edit", edit_id))
            self.fingerprints.update(record.get("base_fingerprint") or {})
            self.stats_layers.update(record.get("stats_layers") or [])
            for key, value in record.get("memo") or []:
                self.memo[canonical_json(key)] = [key, value]
        else:
            self.entries[edit_id].rolled_back = True
            self._history.append(("rollback", edit_id))
            if record.get("delta"):
                self.undo[edit_id] = record["delta"]

    @property
    def next_edit_id(self) -> int:
        return len(self.entries)

    def weight_history(self) -> list[tuple[str, int]]:
        """Every committed change of the weights in order: ("edit", id) for an applied edit,
        ("rollback", id) for its rollback."""
        return list(self._history)

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
        record = seal_line(record, self.head)
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
        self.head = record["chain"]
        self._index(record)

    def write_delta(self, edit_id: int, delta: Delta, *, rollback: bool = False) -> dict[str, Any]:
        """Store the factors durably (of edit `edit_id`, or of the correction that rolls it
        back); return the ledger's description of the file."""
        self.ensure_writable()
        name = delta_file_name(edit_id, rollback=rollback)
        # Own copies: an editor may hand out views sharing storage (keys = factors), which
        # safetensors refuses to write.
        tensors = {key: t.clone() for key, t in delta.to_tensors().items()}
        blob = safetensors_bytes.save(tensors, metadata={
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
        return self._load_file(entry.delta, entry.method)

    def load_undo(self, edit_id: int) -> Delta | None:
        """The correction that rolled edit `edit_id` back, or None (it was subtracted)."""
        found = self.undo.get(edit_id)
        return None if found is None else self._load_file(found, self.entries[edit_id].method)

    def _load_file(self, described: dict[str, Any], method: str) -> Delta:
        return read_delta(self.root, described, method)

    def copy_to(self, dest: Path, manifest: dict[str, Any]) -> None:
        """A self-contained copy (every delta the ledger names); the manifest goes last, so a
        copy interrupted half-way is recognisably incomplete."""
        if (dest / MANIFEST).exists() or (dest / LEDGER).exists():
            raise LedgerError(f"{dest} already holds a session; save into a new directory")
        (dest / DELTAS).mkdir(parents=True, exist_ok=True)
        files = [e.delta for e in self.entries.values() if e.delta] + list(self.undo.values())
        for described in files:
            blob = (self.root / described["file"]).read_bytes()
            write_durable(dest / described["file"], blob)
        write_durable(dest / LEDGER, os.pread(self._fd, self._size, 0))
        fsync_dir(dest / DELTAS)
        write_atomic(dest / MANIFEST, json.dumps(seal_manifest(manifest), indent=1).encode())
