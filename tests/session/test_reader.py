"""seqedit.session.reader: the read-only view of a session directory."""
from __future__ import annotations

import json

import pytest

from seqedit import EditSession
from seqedit.session import LedgerError
from seqedit.session.integrity import seal_line
from seqedit.session.reader import read_run

from session_helpers import make_requests

EVAL = {"type": "eval", "step": 2, "live_edits": 1, "evaluator": "efficacy",
        "result": {"score": 0.5}}


def _append(path, text):
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def _append_sealed(path, *records):
    """Append lines as the session would: each chained to the one before."""
    head = json.loads(path.read_text().splitlines()[-1])["chain"]
    sealed = []
    for record in records:
        sealed.append(seal_line(record, head))
        head = sealed[-1]["chain"]
    _append(path, "".join(json.dumps(r) + "\n" for r in sealed))
    return sealed


@pytest.fixture
def run_dir(llama, fake, tmp_path):
    """A closed session directory: edits 0, 1, 2, with edit 1 rolled back."""
    model, tok = llama
    with EditSession(model, tok, fake, ledger_dir=tmp_path / "s") as session:
        session.edit(make_requests(3), progress=False)
        session.rollback(1)
    return tmp_path / "s"


def test_reads_while_a_session_holds_the_lock(llama, fake, tmp_path):
    model, tok = llama
    with EditSession(model, tok, fake, ledger_dir=tmp_path / "s") as session:
        session.edit(make_requests(3), progress=False)
        session.rollback(1)
        run = read_run(tmp_path / "s")
        assert run.live_edit_ids == session.live_edits == [0, 2]
        assert run.records == list(session.records())
        session.edit(make_requests(1, start=3), progress=False)  # reading took no lock
        assert read_run(tmp_path / "s").live_edit_ids == [0, 2, 3]
    assert run.manifest["method"] == "fake"
    assert [r["edit_id"] for r in run.edits] == [0, 1, 2]
    assert [r["edit_id"] for r in run.rollbacks] == [1] and run.rolled_back == {1}
    assert [r["type"] for r in run.records] == ["edit"] * 3 + ["rollback"]


def test_refused_edits_are_edits_but_never_live(run_dir):
    lines = (run_dir / "ledger.jsonl").read_text().splitlines(keepends=True)
    # A refused line, sealed as the session would write it (a flipped status alone is tampering).
    refused = seal_line({**json.loads(lines[2]), "status": "refused"},
                        json.loads(lines[1])["chain"])
    (run_dir / "ledger.jsonl").write_text("".join(lines[:2]) + json.dumps(refused) + "\n")
    run = read_run(run_dir)  # the rollback line is gone with the rewrite
    assert len(run.edits) == 3 and run.live_edit_ids == [0, 1]


def test_a_flipped_status_is_tampering(run_dir):
    lines = (run_dir / "ledger.jsonl").read_text().splitlines(keepends=True)
    lines[2] = json.dumps({**json.loads(lines[2]), "status": "refused"}) + "\n"
    (run_dir / "ledger.jsonl").write_text("".join(lines))
    with pytest.raises(LedgerError, match=r"ledger\.jsonl:3: its chain checksum does not match"):
        read_run(run_dir)


@pytest.mark.parametrize("tail", ['{"type": "edit", "edit_id": 3, "requ',  # no newline yet
                                  '{"type": "edit", "edit_id": 3, "requ\n',  # torn, then newline
                                  "\x00\x00\x00\n"])  # a filesystem's zeros after a crash
def test_a_torn_last_line_is_ignored(run_dir, tail):
    before = read_run(run_dir).records
    _append(run_dir / "ledger.jsonl", tail)
    assert read_run(run_dir).records == before


def test_garbage_before_the_last_line_is_an_error_naming_file_and_line(run_dir):
    path = run_dir / "ledger.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = "not json\n"
    path.write_text("".join(lines))
    with pytest.raises(LedgerError, match=r"ledger\.jsonl:2: not JSON"):
        read_run(run_dir)


def test_a_line_that_is_not_an_object_is_an_error(run_dir):
    _append(run_dir / "ledger.jsonl", "[1, 2]\n")
    _append(run_dir / "ledger.jsonl", json.dumps(EVAL) + "\n")
    with pytest.raises(LedgerError, match=r"ledger\.jsonl:5: a list, not a JSON object"):
        read_run(run_dir)


def test_eval_lines_are_collected_in_order(run_dir):
    second = {**EVAL, "step": 3, "result": {"score": 0.75}}
    sealed = _append_sealed(run_dir / "ledger.jsonl", EVAL, second)
    run = read_run(run_dir)
    assert run.evaluations == sealed
    assert [r["type"] for r in run.records] == ["edit"] * 3 + ["rollback", "eval", "eval"]
    assert run.live_edit_ids == [0, 2]  # other line types do not disturb the edit views


def test_a_manifest_without_its_ledger_is_an_error(run_dir):
    (run_dir / "ledger.jsonl").unlink()  # creation writes the ledger first: this is a loss
    with pytest.raises(LedgerError, match="ledger.jsonl is missing"):
        read_run(run_dir)


def test_a_directory_without_a_manifest_is_not_a_run(tmp_path):
    with pytest.raises(LedgerError, match="not a seqedit session directory"):
        read_run(tmp_path)
