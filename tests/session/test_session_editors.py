"""The session with the real editors (MEMIT, AlphaEdit, ROME) on tiny models."""
from __future__ import annotations

import pytest
import torch
from session_helpers import assert_models_close, make_requests

from seqedit import EditSession
from seqedit.models import spec as model_spec
from seqedit.models import tiny

DOCS = [f"Document {i}: the river flows north through the old city where the king was born. "
        * (i % 5 + 1) for i in range(60)]
FAST = {"v_num_grad_steps": 8, "context_template_starts": ("The", "I"),
        "context_template_length": 4}


def options(tmp_path):
    return {"corpus": DOCS, "max_tokens": 3000, "cache_dir": tmp_path / "cache", "progress": False}


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_weights(model, weights, **tol):
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), weights[n], **tol)


def test_memit_edits_roll_back_and_resume_from_the_registry(tmp_path):
    model, tok = tiny("llama", seed=0)
    reqs = make_requests(3)
    session = EditSession(model, tok, "memit", layers=[0, 1], ledger_dir=tmp_path / "s",
                          stats_options=options(tmp_path), **FAST)
    first = session.edit(reqs[:2], batch_size=2, progress=False)
    after_batch = snapshot(model)
    last = session.edit(reqs[2:], progress=False)
    for r in first + last:
        assert r.status == "applied" and r.post["new"] != r.pre["new"]  # the model moved
    assert [line["stats_layers"] for line in session.records()] == [[0, 1], []]
    session.rollback(1)  # the last edit: weights go back to what they were before it
    assert_weights(model, after_batch, rtol=1e-6, atol=1e-6)
    edited = snapshot(model)
    session.close()
    base, _ = tiny("llama", seed=0)
    with EditSession.resume(tmp_path / "s", base, tok, stats_options=options(tmp_path),
                            progress=False) as resumed:  # editor rebuilt from the manifest
        assert resumed.method == "memit" and resumed.live_edits == [0]
        assert resumed.pending(reqs) == []
    assert_weights(base, edited, rtol=0, atol=0)  # replay is bit-exact, rollback included


def test_alphaedit_resume_continues_like_an_uninterrupted_run(tmp_path):
    reqs = make_requests(3)
    model, tok = tiny("llama", seed=0)
    with EditSession(model, tok, "alphaedit", layers=[0, 1], ledger_dir=tmp_path / "s",
                     stats_options=options(tmp_path), **FAST) as session:
        session.edit(reqs[:2], progress=False)
        state = session._editor.state()
    base, _ = tiny("llama", seed=0)
    with EditSession.resume(tmp_path / "s", base, tok, stats_options=options(tmp_path),
                            progress=False) as resumed:
        for name, gram in state.items():  # commit replayed from the ledger's keys
            torch.testing.assert_close(resumed._editor.state()[name], gram)
        resumed.edit(reqs, progress=False)
    straight, _ = tiny("llama", seed=0)
    with EditSession(straight, tok, "alphaedit", layers=[0, 1], stats_options=options(tmp_path),
                     **FAST) as session:
        session.edit(reqs, progress=False)
    # the third edit saw the same templates, statistics and state in both runs: same bits
    assert_models_close(base, straight, rtol=0, atol=0)


def test_rome_on_gpt2_exports_a_matching_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    model, tok = tiny("gpt2", seed=0)
    spec = model_spec(model)
    with EditSession(model, tok, "rome", layer=1, stats_options=options(tmp_path),
                     **FAST) as session:
        results = session.edit(make_requests(3), progress=False)
        assert all(r.status == "applied" for r in results)
        session.rollback(0)
        report = session.export_peft(tmp_path / "lora")
        with pytest.raises(ValueError, match="one request per step"):
            session.edit(make_requests(2, start=5), batch_size=2, progress=False)
    assert report["fan_in_fan_out"] and report["r"] == 2
    assert list(report["layers"]) == [spec.mlp_out_weight_name(1).removesuffix(".weight")]
    adapted = peft.PeftModel.from_pretrained(tiny("gpt2", seed=0)[0], tmp_path / "lora").eval()
    ids = tok(["The capital of Country 1 is"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(adapted(**ids).logits, model(**ids).logits, atol=1e-5, rtol=1e-5)
