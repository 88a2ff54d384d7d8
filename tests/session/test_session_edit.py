"""EditSession.edit: application, batching, validation before any change, refusals, skipping."""
from __future__ import annotations

import json

import pytest
import torch

from seqedit import EditSession
from seqedit.data import EditRequest, RequestValidationError
from seqedit.models import spec as model_spec
from seqedit.models import tiny
from seqedit.session import EditRefused, LedgerError

from session_helpers import (FakeConfig, FakeEditor, assert_models_close, expected_weights,
                             make_requests, model_hash)


def test_sequential_edits_apply_exactly_the_deltas(llama, fake, tmp_path):
    model, tok = llama
    reqs = make_requests(3)
    want = expected_weights(model, FakeEditor(fake.spec), [[r] for r in reqs])
    with EditSession(model, tok, fake, ledger_dir=tmp_path / "s") as session:
        results = session.edit(reqs, progress=False)
        assert [r.status for r in results] == ["applied"] * 3
        assert [r.edit_id for r in results] == [0, 1, 2]
        assert [r.case_id for r in results] == [0, 1, 2]
        assert session.live_edits == [0, 1, 2]
    for name, w in want.items():
        torch.testing.assert_close(model.get_parameter(name).double(), w, rtol=1e-6, atol=1e-6)
    for r in results:
        for probs in (r.pre, r.post):
            assert 0 < probs["new"] < 1 and 0 < probs["true"] < 1
            assert isinstance(probs["new_argmax"], bool)
        assert r.success == (r.post["new"] > r.post["true"])
        assert {"probe_pre_s", "compute_s", "write_s", "apply_s", "commit_s", "probe_post_s",
                "total_s", "ledger_s"} <= set(r.timings)
    assert fake.computed == 3
    assert sorted(p.name for p in (tmp_path / "s" / "deltas").iterdir()) == [
        "000000.safetensors", "000001.safetensors", "000002.safetensors"]


def test_batches_share_one_step(llama, fake):
    model, tok = llama
    reqs = make_requests(5)
    want = expected_weights(model, FakeEditor(fake.spec), [reqs[:2], reqs[2:4], reqs[4:]])
    with EditSession(model, tok, fake) as session:
        results = session.edit(reqs, batch_size=2, progress=False)
        assert [r.edit_id for r in results] == [0, 0, 1, 1, 2]
        lines = list(session.records())
    assert [len(line["requests"]) for line in lines] == [2, 2, 1]
    assert lines[0]["delta"]["layers"][0]["rank"] == 2
    for name, w in want.items():
        torch.testing.assert_close(model.get_parameter(name).double(), w, rtol=1e-6, atol=1e-6)


def test_ledger_line_fields(llama, fake, tmp_path):
    model, tok = llama
    with EditSession(model, tok, fake, ledger_dir=tmp_path / "s", seed=0) as session:
        session.edit(make_requests(1), progress=False)
        session.rollback(0)
    lines = (tmp_path / "s" / "ledger.jsonl").read_text().splitlines()
    edit, rollback = (json.loads(line) for line in lines)
    assert set(edit) == {"type", "edit_id", "time", "method", "config_hash", "seqedit_version", "chain",
                         "requests", "request_keys", "stats_layers", "info", "memo", "status", "reason",
                         "delta", "layer_stats", "base_fingerprint", "timings", "probabilities"}
    assert edit["type"] == "edit" and edit["status"] == "applied" and edit["reason"] is None
    assert edit["requests"] == [make_requests(1)[0].to_dict()]
    assert edit["info"] == {"requests": 1}
    assert [key for key, _ in edit["memo"]] == [["fake_probe", 0]]
    assert set(edit["delta"]) == {"file", "sha256", "bytes", "layers", "keys"}
    names = [fake.spec.mlp_out_weight_name(i) for i in (0, 1)]
    assert [d["name"] for d in edit["delta"]["layers"]] == names
    assert set(edit["layer_stats"]) == set(names)
    for stats in edit["layer_stats"].values():
        assert set(stats) == {"abs_sum_w", "abs_sum_delta", "delta_fro_sq"}
        assert stats["delta_fro_sq"] > 0
    # fingerprints of the declared layers are in the manifest, taken before the first edit
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert set(manifest["base_fingerprint"]) == set(names) and edit["base_fingerprint"] == {}
    assert manifest["config"] == {"layers": [0, 1], "scale": 0.05, "poison": [], "zero": [],
                                  "use_stats": False}
    prob = edit["probabilities"][0]
    assert set(prob) == {"case_id", "pre", "post", "success"}
    assert set(rollback) == {"type", "edit_id", "time", "seqedit_version", "layer_stats", "timings",
                             "chain"}
    assert rollback["type"] == "rollback" and rollback["edit_id"] == 0


def test_bad_requests_refused_before_any_weight_moves(llama, fake):
    model, tok = llama
    before = model_hash(model)
    bad = EditRequest(prompt="The capital of {} is", subject="X", target_new="Rome",
                      target_true="rome", case_id=99)
    with EditSession(model, tok, fake) as session:
        with pytest.raises(RequestValidationError) as err:
            session.edit(make_requests(3) + [bad], progress=False)
        assert err.value.problems[0].index == 3
        assert fake.computed == 0 and list(session.records()) == []
    assert model_hash(model) == before


def test_non_finite_delta_refused_and_run_continues(llama, tmp_path):
    model, tok = llama
    editor = FakeEditor(model_spec(model), FakeConfig(poison=(1,)))
    with EditSession(model, tok, editor, ledger_dir=tmp_path / "s") as session:
        session.edit(make_requests(1), progress=False)
        before = model_hash(model)
        results = session.edit(make_requests(1, start=1), progress=False)
        assert results[0].status == "refused" and "non-finite" in results[0].reason
        assert results[0].success is False and results[0].pre is not None
        assert model_hash(model) == before  # weights untouched
        assert editor.state.keys() and session.live_edits == [0]
        line = list(session.records())[-1]
        assert line["status"] == "refused" and "non-finite" in line["reason"]
        assert line["delta"] is None and line["layer_stats"] == {} and line["base_fingerprint"] == {}
        assert session.edit(make_requests(1, start=2), progress=False)[0].status == "applied"
        with pytest.raises(EditRefused, match="non-finite"):
            session.edit(make_requests(1, start=1), progress=False, skip_done=False, strict=True)
        assert list(session.records())[-1]["status"] == "refused"
    assert not (tmp_path / "s" / "deltas" / "000001.safetensors").exists()


def test_zero_delta_is_refused_not_silently_applied(llama):
    model, tok = llama
    editor = FakeEditor(model_spec(model), FakeConfig(zero=(0,)))
    with EditSession(model, tok, editor) as session:
        result = session.edit(make_requests(1), progress=False)[0]
    assert result.status == "refused" and "zero delta" in result.reason


def test_malformed_delta_is_an_error_and_nothing_moves(llama):
    model, tok = llama
    spec = model_spec(model)

    class Wrong(FakeEditor):
        def compute(self, model, requests, ctx):
            delta = super().compute(model, requests, ctx)
            delta.layers[1].v = delta.layers[1].v[:-1]
            return delta

    before = model_hash(model)
    with EditSession(model, tok, Wrong(spec)) as session:
        with pytest.raises(ValueError, match="do not fit the weight"):
            session.edit(make_requests(2), progress=False)
        assert list(session.records()) == []
    assert model_hash(model) == before


def test_failure_before_commit_point_restores_memory(llama, fake, monkeypatch):
    model, tok = llama
    with EditSession(model, tok, fake) as session:
        session.edit(make_requests(1), progress=False)
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        state = {k: v.clone() for k, v in fake.state.items()}

        def disk_full(record):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(session._ledger, "append", disk_full)
        with pytest.raises(OSError):
            session.edit(make_requests(1, start=1), progress=False)
        monkeypatch.undo()
        # the step was applied, then undone: W + Δ − Δ, equal to W up to rounding
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), weights[n], rtol=1e-6, atol=1e-7)
        for k in state:
            torch.testing.assert_close(fake.state[k], state[k])
        assert len(list(session.records())) == 1 and session.live_edits == [0]
        again = session.edit(make_requests(1, start=1), progress=False)
        assert again[0].status == "applied" and again[0].edit_id == 1


def test_rerun_skips_what_the_ledger_has(llama, fake):
    model, tok = llama
    reqs = make_requests(5)
    with EditSession(model, tok, fake) as session:
        session.edit(reqs[:3], progress=False)
        assert session.pending(reqs) == reqs[3:]
        results = session.edit(reqs, progress=False)
        assert [r.status for r in results] == ["skipped"] * 3 + ["applied"] * 2
        assert [r.edit_id for r in results] == [0, 1, 2, 3, 4]
        assert fake.computed == 5
        assert session.pending(reqs) == []


def test_case_id_reused_with_other_content_is_refused(llama, fake):
    model, tok = llama
    with EditSession(model, tok, fake) as session:
        session.edit(make_requests(1), progress=False)
        changed = EditRequest(prompt="The capital of {} is", subject="Country 0",
                              target_new="Lisbon", target_true="Madrid", case_id=0)
        before = model_hash(model)
        with pytest.raises(RequestValidationError, match="roll it back first"):
            session.edit([changed], progress=False)
        assert model_hash(model) == before
        session.rollback(0)
        assert session.edit([changed], progress=False)[0].status == "applied"


def test_two_sessions_in_one_process_are_independent():
    (m1, tok), (m2, _) = tiny("llama", seed=0), tiny("llama", seed=0)
    (r1, _), (r2, _) = tiny("llama", seed=0), tiny("llama", seed=0)
    spec = model_spec(m1)
    e1, e2 = FakeEditor(spec), FakeEditor(spec, FakeConfig(layers=(1,), scale=0.1))
    a, b = make_requests(4), make_requests(4, start=10)
    with EditSession(m1, tok, e1) as s1, EditSession(m2, tok, e2) as s2:
        for x, y in zip(a, b):
            s1.edit([x], progress=False)
            s2.edit([y], progress=False)
        s1.rollback(1)
    ref1, ref2 = FakeEditor(spec), FakeEditor(spec, FakeConfig(layers=(1,), scale=0.1))
    with EditSession(r1, tok, ref1) as s:
        s.edit([a[0], a[2], a[3]], progress=False)
    with EditSession(r2, tok, ref2) as s:
        s.edit(b, progress=False)
    assert_models_close(m1, r1)
    assert_models_close(m2, r2)
    assert e1.state.keys() == ref1.state.keys()
    for k in e1.state:
        torch.testing.assert_close(e1.state[k], ref1.state[k])


def test_dict_requests_and_method_config_errors(llama, fake):
    model, tok = llama
    with EditSession(model, tok, fake) as session:
        result = session.edit(make_requests(1)[0].to_dict(), progress=False)
        assert result[0].status == "applied"
        with pytest.raises(ValueError, match="batch_size"):
            session.edit(make_requests(1, start=1), batch_size=0)
    with pytest.raises(LedgerError, match="the session is closed"):
        session.edit(make_requests(1, start=1), progress=False)
    with pytest.raises(TypeError, match="apply only when `method` is a name"):
        EditSession(model, tok, fake, layers=[1])


def test_success_without_a_known_old_answer_uses_the_argmax(llama, fake):
    model, tok = llama
    req = EditRequest(prompt="The capital of {} is", subject="Nowhere", target_new="Paris",
                      case_id="n")
    with EditSession(model, tok, fake) as session:
        result = session.edit([req], progress=False)[0]
    assert result.pre["true"] is None and result.post["true"] is None
    assert result.success == result.post["new_argmax"]
