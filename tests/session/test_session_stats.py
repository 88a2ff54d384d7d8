"""The session's key statistics: computed once, on the base weights, and again before a replay."""
from __future__ import annotations

import pytest
import torch
from session_helpers import FakeConfig, FakeEditor, make_requests

import seqedit.stats
from seqedit import EditSession
from seqedit.models import spec as model_spec
from seqedit.models import tiny

DOCS = [("The river flows north through the old city and the king was born there. " * (i % 4 + 1))
        for i in range(40)]


def stats_options(tmp_path):
    return {"corpus": DOCS, "max_tokens": 600, "cache_dir": tmp_path / "cache", "progress": False}


def test_default_statistics_come_from_the_base_model_once(tmp_path, monkeypatch):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = []
    real = seqedit.stats.second_moments

    def counting(m, t, layers, **options):
        calls.append(sorted(layers))
        for n, p in m.named_parameters():  # never on edited weights
            assert torch.equal(p, base[n]), n
        return real(m, t, layers, **options)

    monkeypatch.setattr(seqedit.stats, "second_moments", counting)
    config = FakeConfig(use_stats=True)
    with EditSession(model, tok, FakeEditor(spec, config), ledger_dir=tmp_path / "s",
                     stats_options=stats_options(tmp_path)) as session:
        session.edit(make_requests(3), progress=False)
        assert calls == [[0, 1]]  # both layers in one pass, at the first request
        assert [line["stats_layers"] for line in session.records()] == [[0, 1], [], []]
    fresh, _ = tiny("llama", seed=0)
    with EditSession.resume(tmp_path / "s", fresh, tok, method=FakeEditor(spec, config),
                            stats_options=stats_options(tmp_path), progress=False) as resumed:
        assert calls == [[0, 1], [0, 1]]  # before the replay moved any weight
        resumed.edit(make_requests(4), progress=False)
    assert len(calls) == 2


def test_statistics_first_asked_for_after_an_edit_are_refused(tmp_path):
    model, tok = tiny("llama", seed=0)

    class Late(FakeEditor):
        def compute(self, model, requests, ctx):
            if self.computed == 1:
                ctx.require_second_moment(2)  # a layer it never declared
            return super().compute(model, requests, ctx)

    with EditSession(model, tok, Late(model_spec(model)),
                     stats_options=stats_options(tmp_path)) as session:
        session.edit(make_requests(1), progress=False)
        with pytest.raises(RuntimeError, match="after the session had edited the model"):
            session.edit(make_requests(1, start=1), progress=False)
        assert session.live_edits == [0]


def test_user_statistics_dict_and_callable(llama):
    model, tok = llama
    spec = model_spec(model)
    eye = torch.eye(spec.mlp_hidden_size, dtype=torch.float64)
    editor = FakeEditor(spec, FakeConfig(use_stats=True))
    with EditSession(model, tok, editor, stats={0: eye, 1: (eye, 10)}) as session:
        assert session.edit(make_requests(1), progress=False)[0].status == "applied"
        assert list(session.records())[0]["stats_layers"] == []
    asked = []
    editor = FakeEditor(spec, FakeConfig(use_stats=True, layers=(2,)))
    with EditSession(model, tok, editor, stats=lambda layer: asked.append(layer) or eye) as session:
        session.edit(make_requests(2), progress=False)
    assert asked == [2]  # asked once, then reused
    editor = FakeEditor(spec, FakeConfig(use_stats=True, layers=(2,)))
    with EditSession(model, tok, editor, stats={0: eye}) as session:
        with pytest.raises(KeyError, match="no key statistics for layer 2"):
            session.edit(make_requests(1), progress=False)
