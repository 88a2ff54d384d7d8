"""The issue's "done when" shape end to end on the packaged SmolLM2 (slow): MEMIT edits with the
editing, health, general and GORA evaluators on schedule, all in the ledger and resumable."""
from __future__ import annotations

import pytest

import seqedit
from seqedit import data, metrics
from seqedit.session import read_run


def evaluators():
    return [metrics.create("editing", fluency_prompts=2, fluency_tokens=10),
            metrics.create("health"),
            metrics.create("general", tasks=["wikitext", "sst2"], limit=3,
                           task_limits={"wikitext": 1}),
            metrics.create("gora", n_probes=40)]


@pytest.mark.slow
def test_memit_with_every_evaluator_on_schedule_and_resumed(tmp_path):
    from seqedit.models import load

    try:
        model, tok = load("smollm2-135m")
    except FileNotFoundError as err:
        pytest.skip(f"packaged SmolLM2 not installed: {err}")
    requests = data.load("counterfact", limit=3)
    stats = {"max_tokens": 5_000, "cache_dir": tmp_path / "stats", "progress": False}
    session = seqedit.EditSession(model, tok, method="memit", ledger_dir=tmp_path / "run",
                                  stats_options=stats, evaluators=evaluators(), eval_every=2)
    session.edit(requests[:2], progress=False)
    names = ["editing", "health", "general", "gora"]
    assert [(r.step, r.evaluator) for r in session.evaluations] == [
        (s, n) for s in (0, 2) for n in names]
    for result in session.evaluations:
        # Nothing is edited at step 0, so the editing metrics have nothing to score yet.
        assert bool(result.metrics) == (result.step > 0 or result.evaluator != "editing")
        assert all(m.protocol for m in result.metrics)
    final = {r.evaluator: r for r in session.evaluations if r.step == 2}
    assert final["editing"].get("efficacy", family="binary").n == 2
    assert final["health"].value("sigma_max_delta_ratio",
                                 weight="model.layers.8.mlp.down_proj.weight") > 0
    session.close()

    model, tok = load("smollm2-135m")
    resumed = seqedit.EditSession.resume(tmp_path / "run", model, tok, stats_options=stats,
                                         evaluators=evaluators(), eval_every=2, progress=False)
    resumed.edit(requests, progress=False)
    steps = [(e["step"], e["evaluator"]) for e in read_run(tmp_path / "run").evaluations]
    assert steps == [(s, n) for s in (0, 2, 3) for n in names]  # none repeated after the resume
    resumed.close()
