"""save / load: a self-contained copy that reopens on the base model, and only on it."""
from __future__ import annotations

import json

import pytest
import torch
from session_helpers import FakeEditor, assert_models_close, make_requests

from seqedit import EditSession
from seqedit.models import spec as model_spec
from seqedit.models import tiny
from seqedit.session import LedgerError


def test_save_load_round_trip(tmp_path):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    editor = FakeEditor(spec)
    with EditSession(model, tok, editor) as session:  # ledger in a temporary directory
        session.edit(make_requests(4), batch_size=2, progress=False)
        session.edit(make_requests(1, start=4), progress=False)
        session.rollback(1)
        saved = session.save(tmp_path / "saved")
        assert session.save(session.directory) == session.directory
        with pytest.raises(LedgerError, match="already holds a session"):
            session.save(tmp_path / "saved")
        temp_dir = session.directory
    assert not temp_dir.exists()  # close() removed the temporary ledger
    manifest = json.loads((saved / "manifest.json").read_text())
    assert set(manifest["base_fingerprint"]) == {spec.mlp_out_weight_name(i) for i in (0, 1)}
    assert manifest["method"] == "fake" and manifest["model"]["num_layers"] == spec.num_layers

    base, _ = tiny("llama", seed=0)
    loaded_editor = FakeEditor(spec)
    with EditSession.load(saved, base, tok, method=loaded_editor, progress=False) as loaded:
        assert loaded.live_edits == [0, 2]
        assert_models_close(base, model)
        for k in editor.state:
            torch.testing.assert_close(loaded_editor.state[k], editor.state[k])
        # the loaded session goes on appending to the saved directory
        assert loaded.edit(make_requests(6), progress=False)[5].edit_id == 3
    assert len((saved / "ledger.jsonl").read_text().splitlines()) == 5


def test_load_refuses_another_base_model(tmp_path):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    with EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s") as session:
        session.edit(make_requests(2), progress=False)
    other, _ = tiny("llama", seed=3)
    with pytest.raises(LedgerError, match="differ from the base weights"):
        EditSession.load(tmp_path / "s", other, tok, method=FakeEditor(spec))
    half, _ = tiny("llama", seed=0)
    with pytest.raises(LedgerError, match="dtype bfloat16"):
        EditSession.load(tmp_path / "s", half.to(torch.bfloat16), tok, method=FakeEditor(spec))
    gpt2, gtok = tiny("gpt2", seed=0)
    with pytest.raises(LedgerError, match="class: 'GPT2LMHeadModel'"):
        EditSession.load(tmp_path / "s", gpt2, gtok, method=FakeEditor(model_spec(gpt2)))
    assert len((tmp_path / "s" / "ledger.jsonl").read_text().splitlines()) == 2


def test_a_changed_delta_file_is_detected(tmp_path):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    with EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s") as session:
        session.edit(make_requests(1), progress=False)
    path = tmp_path / "s" / "deltas" / "000000.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    base, _ = tiny("llama", seed=0)
    with pytest.raises(LedgerError, match="checksum differs"):
        EditSession.load(tmp_path / "s", base, tok, method=FakeEditor(spec), progress=False)
