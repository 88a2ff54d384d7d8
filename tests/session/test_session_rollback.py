"""rollback: exact removal of one edit, clear refusals, editor state reverted, ledger line."""
from __future__ import annotations

import pytest
import torch
from session_helpers import FakeConfig, FakeEditor, assert_models_close, make_requests, model_hash

from seqedit import EditSession
from seqedit.models import spec as model_spec
from seqedit.models import tiny
from seqedit.session import RollbackError


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rollback_equals_the_sequence_without_that_edit(arch):
    model, tok = tiny(arch, seed=0)
    ref, _ = tiny(arch, seed=0)
    spec = model_spec(model)
    reqs = make_requests(5)
    editor, ref_editor = FakeEditor(spec), FakeEditor(spec)
    with EditSession(model, tok, editor) as session:
        session.edit(reqs, progress=False)
        session.rollback(1)
        assert session.live_edits == [0, 2, 3, 4]
        last = list(session.records())[-1]
        assert last["type"] == "rollback" and last["edit_id"] == 1
    with EditSession(ref, tok, ref_editor) as direct:
        direct.edit([reqs[0], *reqs[2:]], progress=False)
    assert_models_close(model, ref, rtol=1e-6, atol=1e-7)
    for name in ref_editor.state:
        torch.testing.assert_close(editor.state[name], ref_editor.state[name])


def test_rollback_refusals_change_nothing(llama):
    model, tok = llama
    editor = FakeEditor(model_spec(model), FakeConfig(poison=(1,)))
    with EditSession(model, tok, editor) as session:
        session.edit(make_requests(3), progress=False)  # edit 1 is refused
        session.rollback(2)
        before, lines = model_hash(model), len(list(session.records()))
        for bad, message in [(7, "no edit 7"), (-1, "no edit -1"), ("0", "no edit '0'"),
                             (True, "no edit True"), (1, "was refused"), (2, "already rolled back")]:
            with pytest.raises(RollbackError, match=message):
                session.rollback(bad)
        assert model_hash(model) == before and len(list(session.records())) == lines


def test_failed_rollback_leaves_the_edit_in_place(llama, fake, monkeypatch):
    model, tok = llama
    with EditSession(model, tok, fake) as session:
        session.edit(make_requests(2), progress=False)
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}

        def disk_full(record):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(session._ledger, "append", disk_full)
        with pytest.raises(OSError):
            session.rollback(0)
        monkeypatch.undo()
        assert session.live_edits == [0, 1]
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), weights[n], rtol=1e-6, atol=1e-7)
        session.rollback(0)
        assert session.live_edits == [1]


def test_rolled_back_request_can_be_edited_again(llama, fake):
    model, tok = llama
    reqs = make_requests(2)
    with EditSession(model, tok, fake) as session:
        session.edit(reqs, progress=False)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        session.rollback(0)
        # a plain re-run keeps it rolled back; asking explicitly applies it again
        assert [r.status for r in session.edit(reqs, progress=False)] == ["skipped", "skipped"]
        again = session.edit(reqs[:1], progress=False, skip_done=False)
        assert again[0].status == "applied" and again[0].edit_id == 2
        assert session.live_edits == [1, 2]
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n], rtol=1e-6, atol=1e-7)
