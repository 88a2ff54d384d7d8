"""Reading a session directory without opening the session: for progress reports, evaluations
and tools that look at a run while it is being written.

No lock is taken and nothing is repaired, so this is safe next to the one writer. What a crash
(or the writer, right now) may leave at the end is ignored: bytes after the last newline, and a
last line that does not parse. Every earlier line was committed, so one that does not parse, or
whose chain checksum does not hold (`integrity`), means the file was damaged: an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .integrity import chain_root, follow
from .ledger import LEDGER, LedgerError, is_legacy, parse_line, read_manifest


@dataclass(frozen=True)
class Run:
    """One snapshot of a session directory: its manifest and every committed ledger line."""

    directory: Path
    manifest: dict[str, Any]
    records: list[dict[str, Any]]  # ledger lines in order, every type (edit, rollback, eval, ...)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("type") == kind]

    @property
    def edits(self) -> list[dict[str, Any]]:
        """Edit lines, applied and refused."""
        return self.of_type("edit")

    @property
    def rollbacks(self) -> list[dict[str, Any]]:
        return self.of_type("rollback")

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """`eval` lines: {"type": "eval", "step", "live_edits", "evaluator", "result"}."""
        return self.of_type("eval")

    @property
    def rolled_back(self) -> frozenset[int]:
        return frozenset(r["edit_id"] for r in self.rollbacks)

    @property
    def live_edit_ids(self) -> list[int]:
        """Applied edits not rolled back, in ledger order: what a resumed session would hold."""
        gone = self.rolled_back
        return [r["edit_id"] for r in self.edits
                if r.get("status") == "applied" and r["edit_id"] not in gone]


def read_run(directory: str | os.PathLike) -> Run:
    """The manifest and committed ledger lines of the session in `directory`.

    Raises LedgerError when `directory` holds no session or a line before the last is not a JSON
    object (naming the file and line number).
    """
    root = Path(directory)
    manifest = read_manifest(root)
    path = root / LEDGER
    if not path.is_file():
        raise LedgerError(f"{root}: the manifest is there but {LEDGER} is missing")
    data = path.read_bytes()
    lines = data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]
    records, head, legacy = [], chain_root(manifest), is_legacy(manifest)
    for number, line in enumerate(lines, 1):
        # The last line may be the writer's line in progress, or a crash's.
        record = parse_line(line, f"{path}:{number}", may_be_torn=number == len(lines))
        if record is None:
            break
        try:
            head = follow(head, record, line, legacy=legacy)
        except ValueError as err:
            raise LedgerError(f"{path}:{number}: {err}") from None
        records.append(record)
    return Run(root, manifest, records)
