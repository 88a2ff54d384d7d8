"""Crash safety: a session killed at any point resumes with no edit lost and none applied twice.

A kill is simulated by raising a BaseException from the session's `_crash_point` hook and then
throwing the model away, as the dead process would; the in-process cleanup that runs on the
way out only touches memory, so the directory is left exactly as a kill leaves it. One test kills
a real subprocess with os._exit to check that claim.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from session_helpers import FakeConfig, FakeEditor, assert_models_close, make_requests

from seqedit import EditSession
from seqedit.models import spec as model_spec
from seqedit.models import tiny
from seqedit.session import LedgerError
from seqedit.session.integrity import seal_manifest


class Killed(BaseException):
    pass


def kill_at(session, where):
    def point(name):
        if name == where:
            raise Killed(name)

    session._crash_point = point


def reference_run(requests, arch="llama"):
    model, tok = tiny(arch, seed=0)
    editor = FakeEditor(model_spec(model))
    with EditSession(model, tok, editor) as session:
        session.edit(requests, progress=False)
    return model, editor


def applied_keys(directory):
    lines = [json.loads(x) for x in (Path(directory) / "ledger.jsonl").read_text().splitlines()]
    return [k for line in lines if line.get("status") == "applied" for k in line["request_keys"]]


@pytest.mark.parametrize("where, committed", [
    ("delta_written", False),  # delta file durable, weights not yet touched
    ("applied", False),  # weights moved in memory, no ledger line yet
    ("committed", True),  # ledger line durable, step not yet returned
])
def test_resume_after_kill(tmp_path, where, committed):
    reqs = make_requests(5)
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    session = EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s")
    session.edit(reqs[:2], progress=False)
    probe = session._ctx.memo[("fake_probe", 0)]
    kill_at(session, where)
    with pytest.raises(Killed):
        session.edit(reqs, progress=False)
    session.close()  # the process died: its lock goes with it
    del model, session
    assert (tmp_path / "s" / "deltas" / "000002.safetensors").exists()

    base, _ = tiny("llama", seed=0)
    editor = FakeEditor(spec)
    resumed = EditSession.resume(tmp_path / "s", base, tok, method=editor, progress=False)
    done = 3 if committed else 2
    # memoised from the base model in the first run, not re-derived from the replayed one
    assert resumed._ctx.memo[("fake_probe", 0)] == probe
    assert resumed.live_edits == list(range(done))
    assert resumed.pending(reqs) == reqs[done:]
    # debris of an uncommitted step is gone; a committed step's file is kept
    assert (tmp_path / "s" / "deltas" / "000002.safetensors").exists() == committed
    results = resumed.edit(reqs, progress=False)
    assert [r.status for r in results] == ["skipped"] * done + ["applied"] * (5 - done)
    resumed.close()

    ref, ref_editor = reference_run(reqs)
    assert_models_close(base, ref)
    assert editor.state.keys() == ref_editor.state.keys()
    for k in editor.state:
        assert float((editor.state[k] - ref_editor.state[k]).abs().max()) < 1e-9
    keys = applied_keys(tmp_path / "s")
    assert len(keys) == len(set(keys)) == 5  # none lost, none twice


def test_resume_after_kill_inside_rollback(tmp_path):
    reqs = make_requests(3)
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    session = EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s")
    session.edit(reqs, progress=False)
    kill_at(session, "unapplied")
    with pytest.raises(Killed):
        session.rollback(1)
    session.close()
    base, _ = tiny("llama", seed=0)
    resumed = EditSession.resume(tmp_path / "s", base, tok, method=FakeEditor(spec),
                                 progress=False)
    assert resumed.live_edits == [0, 1, 2]  # the rollback never committed
    resumed.rollback(1)
    resumed.close()
    again, _ = tiny("llama", seed=0)
    with EditSession.resume(tmp_path / "s", again, tok, method=FakeEditor(spec),
                            progress=False) as third:
        assert third.live_edits == [0, 2]
    ref, _ = reference_run([reqs[0], reqs[2]])
    assert_models_close(again, ref)


def test_torn_last_line_is_dropped(tmp_path, caplog):
    reqs = make_requests(3)
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    with EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s") as session:
        session.edit(reqs[:2], progress=False)
    with open(tmp_path / "s" / "ledger.jsonl", "ab") as handle:
        handle.write(b'{"type": "edit", "edit_id": 2, "status": "appl')
    base, _ = tiny("llama", seed=0)
    with EditSession.resume(tmp_path / "s", base, tok, method=FakeEditor(spec),
                            progress=False) as resumed:
        assert "cut short by a crash" in caplog.text
        assert resumed.live_edits == [0, 1]
        assert resumed.edit(reqs, progress=False)[2].edit_id == 2
    assert len((tmp_path / "s" / "ledger.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow  # a fresh interpreter importing torch + transformers: ~10 s of CPU
def test_real_process_kill_between_apply_and_ledger(tmp_path):
    helpers = Path(__file__).parent
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(helpers)!r})
        from session_helpers import FakeEditor, make_requests
        from seqedit import EditSession
        from seqedit.models import spec, tiny
        model, tok = tiny("llama", seed=0)
        session = EditSession(model, tok, FakeEditor(spec(model)), ledger_dir={str(tmp_path / "s")!r})
        session.edit(make_requests(2), progress=False)
        session._crash_point = lambda where: os._exit(17) if where == "applied" else None
        session.edit(make_requests(4), progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr
    base, tok = tiny("llama", seed=0)
    spec = model_spec(base)
    with EditSession.resume(tmp_path / "s", base, tok, method=FakeEditor(spec),
                            progress=False) as resumed:
        assert resumed.live_edits == [0, 1]
        assert [r.status for r in resumed.edit(make_requests(4), progress=False)] == [
            "skipped", "skipped", "applied", "applied"]
    ref, _ = reference_run(make_requests(4))
    assert_models_close(base, ref)


def test_resume_refuses_wrong_model_editor_or_a_busy_directory(tmp_path):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    session = EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s")
    session.edit(make_requests(2), progress=False)
    fresh, _ = tiny("llama", seed=0)
    with pytest.raises(LedgerError, match="in use by another open session"):
        EditSession.resume(tmp_path / "s", fresh, tok, method=FakeEditor(spec))
    with pytest.raises(LedgerError, match="already holds a session"):
        EditSession(fresh, tok, FakeEditor(spec), ledger_dir=tmp_path / "s")
    session.close()
    with pytest.raises(LedgerError, match="not the base model") as err:
        EditSession.resume(tmp_path / "s", model, tok, method=FakeEditor(spec))  # edited weights
    assert spec.mlp_out_weight_name(0) in str(err.value)
    other, _ = tiny("llama", seed=1)
    with pytest.raises(LedgerError, match="not the base model"):
        EditSession.resume(tmp_path / "s", other, tok, method=FakeEditor(spec))
    with pytest.raises(LedgerError, match=r"another config .*differing: \[.scale.\]"):
        EditSession.resume(tmp_path / "s", fresh, tok,
                           method=FakeEditor(spec, FakeConfig(scale=0.5)))
    with pytest.raises(LedgerError, match="not in seqedit.editors.EDITORS"):
        EditSession.resume(tmp_path / "s", fresh, tok)
    # the failed attempts released the lock and changed nothing
    with EditSession.resume(tmp_path / "s", fresh, tok, method=FakeEditor(spec),
                            progress=False) as ok:
        assert ok.live_edits == [0, 1]
    with pytest.raises(LedgerError, match="no manifest.json"):
        EditSession.resume(tmp_path / "nothing", fresh, tok, method=FakeEditor(spec))


def test_resume_accepts_a_config_field_added_later_at_its_default(tmp_path):
    """A ledger written before a config field existed (its manifest lacks the field) resumes
    while the field holds its default, and names the field when it does not."""
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    with EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s") as session:
        session.edit(make_requests(2), progress=False)
    path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["config"]["zero"]
    path.write_text(json.dumps(seal_manifest(manifest)))  # as the older seqedit wrote it
    fresh, _ = tiny("llama", seed=0)
    with pytest.raises(LedgerError, match=r"differing: \['zero'\]"):
        EditSession.resume(tmp_path / "s", fresh, tok, method=FakeEditor(spec, FakeConfig(zero=(7,))))
    with EditSession.resume(tmp_path / "s", fresh, tok, method=FakeEditor(spec), progress=False) as ok:
        assert ok.live_edits == [0, 1]


def test_corrupt_line_is_an_error_naming_it(tmp_path):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    with EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s") as session:
        session.edit(make_requests(2), progress=False)
    path = tmp_path / "s" / "ledger.jsonl"
    good = path.read_bytes()
    first, rest = good.split(b"\n", 1)
    path.write_bytes(first[:-5] + b"\n" + rest)
    base, _ = tiny("llama", seed=0)
    with pytest.raises(LedgerError, match=r"ledger.jsonl:1: not JSON"):
        EditSession.resume(tmp_path / "s", base, tok, method=FakeEditor(spec))
    path.write_bytes(good)  # the failed open released its lock
    with EditSession.resume(tmp_path / "s", base, tok, method=FakeEditor(spec),
                            progress=False) as resumed:
        assert resumed.live_edits == [0, 1]


def test_a_creation_killed_before_its_manifest_can_be_created_again(tmp_path):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "ledger.jsonl").touch()  # the lock was taken, the manifest never written
    with pytest.raises(LedgerError, match="creation was interrupted"):
        EditSession.resume(tmp_path / "s", model, tok, method=FakeEditor(spec))
    with EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s") as session:
        assert session.edit(make_requests(1), progress=False)[0].status == "applied"


def test_a_manifest_without_its_ledger_is_refused_and_kept(tmp_path):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    with EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s") as session:
        session.edit(make_requests(2), progress=False)
    (tmp_path / "s" / "ledger.jsonl").unlink()
    before = sorted(p.name for p in (tmp_path / "s").rglob("*"))
    fresh, _ = tiny("llama", seed=0)
    with pytest.raises(LedgerError, match="ledger.jsonl is missing"):
        EditSession.resume(tmp_path / "s", fresh, tok, method=FakeEditor(spec))
    assert sorted(p.name for p in (tmp_path / "s").rglob("*")) == before


def test_a_write_failure_that_cannot_be_undone_stops_the_session(tmp_path, monkeypatch):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    session = EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s")
    session.edit(make_requests(1), progress=False)
    ledger_fd, real_fsync = session._ledger._fd, os.fsync

    def fsync(fd):
        if fd == ledger_fd:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    def ftruncate(fd, size):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "ftruncate", ftruncate)
    with pytest.raises(OSError):
        session.edit(make_requests(1, start=1), progress=False)
    monkeypatch.undo()
    assert session.live_edits == [0]  # memory was undone
    with pytest.raises(LedgerError, match="could not be undone"):
        session.edit(make_requests(1, start=2), progress=False)
    session.close()
    base, _ = tiny("llama", seed=0)
    # the line did reach the file: the directory, not memory, is the truth
    with EditSession.resume(tmp_path / "s", base, tok, method=FakeEditor(spec),
                            progress=False) as resumed:
        assert resumed.live_edits == [0, 1]
    ref, _ = reference_run(make_requests(2))
    assert_models_close(base, ref)
