"""examples/sequential_run.py: a killed run resumes where it stopped; rollback and export work."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from seqedit import data
from seqedit.cli.status import summary as summary_of
from seqedit.models import tiny
from seqedit.session import EditSession

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "sequential_run.py"
DOCS = [f"Report {i}: ships leave the harbour at dawn and the market opens after them. " * (i % 4 + 1)
        for i in range(60)]
FAST = {"layers": [0, 1], "v_num_grad_steps": 6, "context_template_starts": ("The",),
        "context_template_length": 3}


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("sequential_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options(tmp_path):
    return {"corpus": DOCS, "max_tokens": 2000, "cache_dir": tmp_path / "cache", "progress": False}


class _Killed(BaseException):
    pass


def test_killed_run_resumes_without_losing_or_repeating_an_edit(script, tmp_path, monkeypatch):
    model, tok = tiny("llama", seed=0, max_positions=1024)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    run_dir = tmp_path / "run"

    # Kill the first run inside the third edit, after its delta is on disk but before it counts.
    calls = {"n": 0}

    def crash(self, where):
        if where == "delta_written":
            calls["n"] += 1
            if calls["n"] == 3:
                raise _Killed

    monkeypatch.setattr(EditSession, "_crash_point", crash)
    with pytest.raises(_Killed):
        script.run(model, tok, run_dir, n=4, method="memit", stats_options=_options(tmp_path),
                   progress=False, **FAST)
    monkeypatch.undo()
    lines = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert [x["edit_id"] for x in lines if x["type"] == "edit"] == [0, 1]

    fresh, _ = tiny("llama", seed=0, max_positions=1024)  # a new process starts from the base model
    summary = script.run(fresh, tok, run_dir, n=4, method="memit", stats_options=_options(tmp_path),
                         progress=False, rollback=[1], export=tmp_path / "adapter")
    assert summary["skipped_as_done"] == 2 and summary["edited_now"] == 2
    assert summary["live_edits"] == 3
    assert summary["export_max_rel_fro_error"] < 1e-5  # rank 3 fits exactly
    lines = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    edits = [x for x in lines if x["type"] == "edit"]
    ids = [r["case_id"] for x in edits for r in x["requests"]]
    assert ids == [r.case_id for r in data.load("counterfact", limit=4)]  # each once, in order
    assert [x["edit_id"] for x in lines if x["type"] == "rollback"] == [1]

    # the model now holds edits 0, 2, 3: different from the base, equal to a replay of the ledger
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in base.items())
    replayed, _ = tiny("llama", seed=0, max_positions=1024)
    with EditSession.resume(run_dir, replayed, tok, stats_options=_options(tmp_path), progress=False) as s:
        assert s.live_edits == [0, 2, 3]
    for k, v in replayed.state_dict().items():
        torch.testing.assert_close(v, fresh.state_dict()[k], rtol=1e-6, atol=1e-6)

    # `seqedit status` reads the same story from the ledger, and ignores a line still being written
    expect = {"steps": 4, "applied_steps": 4, "refused_steps": 0, "rolled_back": 1, "live_edits": 3,
              "scored": 4, "successful_after_each": sum(p["success"] for x in edits for p in x["probabilities"])}
    assert {k: v for k, v in summary_of(run_dir).items() if k in expect} == expect
    assert summary_of(run_dir)["mean_s_per_edit"] > 0
    with open(run_dir / "ledger.jsonl", "a") as f:
        f.write('{"type": "edit", "edit_id": 4, "requ')
    assert summary_of(run_dir)["steps"] == 4


def test_resuming_with_another_method_is_refused(script, tmp_path):
    model, tok = tiny("llama", seed=0, max_positions=1024)
    script.run(model, tok, tmp_path / "run", n=1, method="memit", stats_options=_options(tmp_path),
               progress=False, **FAST)
    fresh, _ = tiny("llama", seed=0, max_positions=1024)
    with pytest.raises(SystemExit, match="memit"):
        script.run(fresh, tok, tmp_path / "run", n=2, method="rome", stats_options=_options(tmp_path),
                   progress=False)
