"""Evaluators inside a session: schedule, ledger lines, resume without repeats or losses, W0."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from session_helpers import FakeEditor, expected_weights, make_requests, model_hash

from seqedit import EditSession, metrics
from seqedit.metrics import EvalResult, Metric
from seqedit.models import spec as model_spec
from seqedit.models import tiny
from seqedit.session import EvaluationStop, read_run


class Killed(BaseException):
    pass


@dataclass(frozen=True)
class CountConfig:
    kill_at_step: int | None = None


class Counting:
    """Records every call; checks that `ctx.unedited()` really shows the base weights."""

    name = "count"

    def __init__(self, kill_at_step=None):
        self.config = CountConfig(kill_at_step)
        self.calls = []

    def prepare(self, model, ctx):
        self.calls.append(("prepare", ctx.step))
        self.base_hash = model_hash(model)

    def evaluate(self, model, ctx):
        if ctx.step == self.config.kill_at_step:
            raise Killed("inside an evaluation")
        self.calls.append(("evaluate", ctx.step))
        edited = model_hash(model)
        with ctx.unedited():
            assert model_hash(model) == self.base_hash
        assert model_hash(model) == edited
        return EvalResult(self.name, [Metric("live", float(len(ctx.live_requests())),
                                             {"family": "test"})])

    def after_edit(self, model, ctx, requests):
        self.calls.append(("after_edit", ctx.step))
        return EvalResult(self.name, [Metric("batch", float(len(requests)), {"family": "test"})],
                          schedule="after-each")


def steps_of(directory):
    return sorted((r["step"], r["evaluator"]) for r in read_run(directory).evaluations)


def test_schedule_step_zero_every_k_and_the_end(tmp_path):
    model, tok = tiny("llama", seed=0)
    counting = Counting()
    session = EditSession(model, tok, method=FakeEditor(model_spec(model)), ledger_dir=tmp_path,
                          evaluators=[counting], eval_every=2)
    results = session.edit(make_requests(5), progress=False)
    assert steps_of(tmp_path) == [(s, "count") for s in (0, 2, 4, 5)]
    assert [r.step for r in session.evaluations] == [0, 2, 4, 5]
    assert [r.value("live") for r in session.evaluations] == [0.0, 2.0, 4.0, 5.0]
    assert counting.calls[0] == ("prepare", 0)
    assert [c for c in counting.calls if c[0] == "after_edit"] == [("after_edit", s)
                                                                  for s in range(1, 6)]
    # After-each results live in the edit's own line and in the EditResult.
    assert results[0].evaluations["count"].value("batch") == 1.0
    line = read_run(tmp_path).edits[0]
    assert line["evaluations"]["count"]["schedule"] == "after-each"
    assert "after_each_s" in line["timings"]
    # Asking again at a step the ledger holds returns the recorded result.
    before = len(read_run(tmp_path).records)
    assert session.evaluate()[0].step == 5
    assert len(read_run(tmp_path).records) == before
    session.close()


class Baselined(Counting):
    """An evaluator whose `prepare` measures the unedited model (as general/safety do)."""

    name = "baselined"

    def unedited_result(self, ctx):
        self.calls.append(("unedited_result", ctx.step))
        return EvalResult(self.name, [Metric("live", -1.0, {"family": "test"})])


def test_step_zero_reuses_what_prepare_measured_on_the_unedited_model(tmp_path):
    model, tok = tiny("llama", seed=0)
    ev = Baselined()
    with EditSession(model, tok, method=FakeEditor(model_spec(model)), ledger_dir=tmp_path,
                     evaluators=[ev], eval_every=2) as session:
        session.edit(make_requests(2), progress=False)
        session.rollback(0)  # all edits rolled back: live 0, but not step 0 — measured again
        session.rollback(1)
        session.evaluate()
    assert ("unedited_result", 0) in ev.calls and ("evaluate", 0) not in ev.calls
    assert [c for c in ev.calls if c[0] == "evaluate"] == [("evaluate", 2), ("evaluate", 2)]
    first = read_run(tmp_path).evaluations[0]
    assert first["step"] == 0 and first["result"]["info"]["measured"].startswith("by prepare")


@pytest.mark.parametrize("where", ["after_edit_line", "inside_eval"])
def test_kill_between_an_edit_and_its_evaluation_neither_repeats_nor_drops_it(tmp_path, where):
    requests = make_requests(5)
    model, tok = tiny("llama", seed=0)
    first = Counting(kill_at_step=2 if where == "inside_eval" else None)
    session = EditSession(model, tok, method=FakeEditor(model_spec(model)), ledger_dir=tmp_path,
                          evaluators=[first], eval_every=2)
    if where == "after_edit_line":
        seen = []

        def point(name):
            if name == "committed":
                seen.append(name)
                if len(seen) == 2:  # edit 1's line is on disk; step 2's evaluation is owed
                    raise Killed(name)

        session._crash_point = point
    with pytest.raises(Killed):
        session.edit(requests, progress=False)
    session.close()
    del model
    assert steps_of(tmp_path) == [(0, "count")]
    assert len(read_run(tmp_path).edits) == 2

    model, tok = tiny("llama", seed=0)
    second = Counting()
    session = EditSession.resume(tmp_path, model, tok, method=FakeEditor(model_spec(model)),
                                 evaluators=[second], eval_every=2, progress=False)
    session.edit(requests, progress=False)
    assert steps_of(tmp_path) == [(s, "count") for s in (0, 2, 4, 5)]
    evaluated = [s for kind, s in second.calls if kind == "evaluate"]
    assert evaluated == [2, 4, 5]  # step 0 is not repeated; the owed step 2 is not lost
    assert second.calls[0] == ("prepare", 0)
    session.close()


def test_base_weights_and_health_match_the_oracle(tmp_path):
    requests = make_requests(3)
    model, tok = tiny("llama", seed=0)
    editor = FakeEditor(model_spec(model))
    oracle = expected_weights(model, editor, [[r] for r in requests])
    base = {n: model.get_parameter(n).detach().clone() for n in oracle}
    health = metrics.create("health")
    session = EditSession(model, tok, method=editor, ledger_dir=tmp_path, evaluators=[health])
    session.edit(requests, progress=False)
    result = session.evaluations[-1]
    for name, want in oracle.items():
        delta = want - base[name].double()
        assert result.value("delta_fro", weight=name) == pytest.approx(
            float(torch.linalg.norm(delta)), rel=1e-5)
        assert result.value("sigma_max_delta_ratio", weight=name) == pytest.approx(
            float(torch.linalg.svdvals(delta)[0] / torch.linalg.svdvals(base[name].double())[0]),
            rel=1e-4)
    # Rolled-back edits leave the accumulated change (what the demo used to count in).
    session.rollback(0)
    result = session.evaluate()[0]
    remaining = expected_weights(tiny("llama", seed=0)[0], editor, [[r] for r in requests[1:]])
    name = next(iter(remaining))
    assert result.value("delta_fro", weight=name) == pytest.approx(
        float(torch.linalg.norm(remaining[name] - base[name].double())), rel=1e-5)
    session.close()


def test_editing_evaluator_in_a_session_compares_with_the_unedited_model(tmp_path):
    requests = make_requests(2)
    model, tok = tiny("llama", seed=0)
    editing = metrics.create("editing", fluency_prompts=0, portability=False, multihop=False)
    session = EditSession(model, tok, method=FakeEditor(model_spec(model)), ledger_dir=tmp_path,
                          evaluators=[editing])
    before = model_hash(model)
    results = session.edit(requests, progress=False)
    assert model_hash(model) != before
    after_each = results[0].evaluations["editing"]
    assert after_each.schedule == "after-each"
    assert {m.protocol["family"] for m in after_each.metrics} == {"binary", "token", "generation"}
    final = session.evaluations[-1]
    assert final.step == 2 and final.get("efficacy", family="binary").n == 2
    session.close()


def test_stop_on_alarm_records_then_raises(tmp_path):
    model, tok = tiny("llama", seed=0)
    health = metrics.create("health", alarm_sigma_ratio=1e-6, stop_on_alarm=True)
    session = EditSession(model, tok, method=FakeEditor(model_spec(model)), ledger_dir=tmp_path,
                          evaluators=[health])
    with pytest.raises(EvaluationStop, match="σ_max"):
        session.edit(make_requests(3), progress=False)
    run = read_run(tmp_path)
    assert len(run.edits) == 1 and run.edits[0]["status"] == "applied"
    assert run.edits[0]["evaluations"]["health"]["info"]["stop"] is True
    session.close()


@pytest.mark.parametrize("evaluators, every, error", [
    ([object()], None, TypeError),
    (["health"], None, TypeError),
    ([Counting(), Counting()], None, ValueError),
    ([Counting()], 0, ValueError),
    ([Counting()], 1.5, ValueError),
])
def test_bad_evaluators_are_refused_before_anything_is_created(tmp_path, evaluators, every, error):
    model, tok = tiny("llama", seed=0)
    with pytest.raises(error):
        EditSession(model, tok, method=FakeEditor(model_spec(model)),
                    ledger_dir=tmp_path / "run", evaluators=evaluators, eval_every=every)
    assert not (tmp_path / "run").exists()
