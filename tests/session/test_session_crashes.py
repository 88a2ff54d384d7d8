"""Randomised crash and corruption: a run killed with SIGKILL at seeded points, or a run directory
damaged in seeded ways, ends either in a resumed run bit-identical to the uninterrupted one or in
a clear LedgerError that deleted nothing — never in a silently different model."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from session_helpers import FakeEditor, make_requests, model_hash

from seqedit import EditSession
from seqedit.models import spec as model_spec
from seqedit.models import tiny
from seqedit.session import LedgerError

HERE = Path(__file__).parent
POINTS = ("delta_written", "applied", "committed", "unapplied")


def drive(session) -> None:
    """The run: 4 edits, roll back edit 2, 3 more edits. Re-running it after a crash finishes
    exactly what is missing (done edits are skipped, a done rollback is not redone)."""
    requests = make_requests(7)
    session.edit(requests[:4], progress=False)
    if 2 in session.live_edits:
        session.rollback(2)
    session.edit(requests[4:], progress=False)


def fresh():
    model, tok = tiny("llama", seed=0)
    return model, tok, FakeEditor(model_spec(model))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's directory and final weights (one thread, as the killed runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok, editor = fresh()
        directory = tmp_path_factory.mktemp("reference") / "s"
        with EditSession(model, tok, editor, ledger_dir=directory) as session:
            drive(session)
        return directory, model_hash(model)
    finally:
        torch.set_num_threads(threads)


def resume_and_finish(directory: Path) -> str:
    model, tok, editor = fresh()
    with EditSession.resume(directory, model, tok, method=editor, progress=False) as session:
        drive(session)
    return model_hash(model)


def listing(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import torch
    sys.path.insert(0, {helpers!r})
    torch.set_num_threads(1)
    from test_session_crashes import drive, fresh
    from seqedit import EditSession
    model, tok, editor = fresh()
    seen = {{}}
    def point(where):
        seen[where] = seen.get(where, 0) + 1
        if where == {where!r} and seen[where] == {nth}:
            os.kill(os.getpid(), signal.SIGKILL)
    session = EditSession(model, tok, editor, ledger_dir={directory!r})
    session._crash_point = point
    drive(session)
    sys.exit(3)  # the kill point was never reached
""")


def kill_points(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    # 7 edits and one rollback: "unapplied" happens once, the others up to 7 times.
    out = {("unapplied", 1), ("delta_written", 1), ("committed", 7)}
    while len(out) < n:
        where = rng.choice(POINTS[:3])
        out.add((where, rng.randint(1, 7)))
    return sorted(out)


@pytest.mark.parametrize(("where", "nth"), kill_points(8))
def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path, reference, one_thread,
                                                          where, nth):
    directory = tmp_path / "s"
    script = KILLED_RUN.format(helpers=str(HERE), where=where, nth=nth, directory=str(directory))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert resume_and_finish(directory) == reference[1]


def corrupt(directory: Path, rng: random.Random) -> str:
    """One seeded damage to a finished run directory; returns what was done."""
    ledger = directory / "ledger.jsonl"
    deltas = sorted((directory / "deltas").iterdir())
    kind = rng.choice(["flip ledger byte", "truncate ledger", "drop delta", "flip delta byte",
                       "flip manifest byte", "append garbage", "duplicate a line",
                       "stray delta"])
    if kind in ("flip ledger byte", "flip delta byte", "flip manifest byte"):
        path = {"flip ledger byte": ledger, "flip delta byte": rng.choice(deltas),
                "flip manifest byte": directory / "manifest.json"}[kind]
        data = bytearray(path.read_bytes())
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
    elif kind == "truncate ledger":
        data = ledger.read_bytes()
        ledger.write_bytes(data[:rng.randrange(len(data))])
    elif kind == "drop delta":
        rng.choice(deltas).unlink()
    elif kind == "append garbage":
        with open(ledger, "ab") as handle:
            handle.write(bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))))
    elif kind == "duplicate a line":
        lines = ledger.read_bytes().splitlines(keepends=True)
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
        ledger.write_bytes(b"".join(lines))
    else:
        (directory / "deltas" / f"{rng.randrange(100, 999):06d}.safetensors").write_bytes(b"?")
    return kind


@pytest.mark.parametrize("seed", range(24))
def test_a_corrupted_directory_resumes_identically_or_fails_clearly(tmp_path, reference,
                                                                    one_thread, seed):
    directory = tmp_path / "s"
    shutil.copytree(reference[0], directory)
    kind = corrupt(directory, random.Random(seed))
    before = listing(directory)
    try:
        final = resume_and_finish(directory)
    except LedgerError:
        # Refused: nothing may have been deleted or rewritten.
        after = listing(directory)
        assert after == before, kind
        return
    # Accepted: it can only be damage a crash could also leave (a torn tail, whose steps are
    # redone), and the model must be the uninterrupted run's, bit for bit.
    assert final == reference[1], kind
