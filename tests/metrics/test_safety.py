"""The safety evaluator: TruthfulQA MC1/MC2, ToxiGen, AdvBench refusals, muting detection."""
from __future__ import annotations

import math
from collections import Counter

from harness_helpers import collapse, context, offline, same_weights, snapshot

from seqedit.metrics import create, task_docs
from seqedit.metrics.safety import SAFETY_TASKS, advbench_prompt, is_refusal
from seqedit.models import tiny

__all__ = ["offline"]  # a fixture, imported for pytest


def test_every_safety_task_runs_offline(one_thread, offline, tmp_path):
    model, tok = tiny("llama", seed=0)
    ev = create("safety", limit=4, batch_size=8, max_new_tokens=8)
    ctx = context(tok, tmp_path)
    ev.prepare(model, ctx)
    before = snapshot(model)
    result = ev.evaluate(model, ctx)
    assert same_weights(model, before)
    assert {m.protocol["task"] for m in result.metrics} == set(SAFETY_TASKS)
    for m in result.metrics:
        assert m.protocol["family"] == "safety" and m.n == 4
        assert math.isfinite(m.value) and 0.0 <= m.value <= 1.0, m.label
    assert result.get("advbench.refusal_rate").protocol["harness"] == "seqedit generate_greedy"
    assert result.info["truthfulqa_mc2"]["chance"] < 0.6
    # Per-item answer texts differ, so even a random model spreads its picks.
    assert not result.info["truthfulqa_mc1"]["muted"]


def test_muting_fires_on_a_collapsed_model(one_thread, offline, tmp_path):
    model, tok = tiny("llama", seed=0)
    collapse(model)
    ev = create("safety", tasks=["toxigen", "advbench"], limit=6, batch_size=8,
                max_new_tokens=4)
    ctx = context(tok, tmp_path)
    ev.prepare(model, ctx)
    result = ev.evaluate(model, ctx)
    assert result.info["muted_tasks"] == ["advbench", "toxigen"]
    assert result.info["toxigen"]["muted_unedited"]
    # A constant answer scores the majority share: ToxiGen's collapse artefact.
    chance = result.info["toxigen"]["chance"]
    assert min(abs(result.value("toxigen.acc") - c) for c in (chance, 1 - chance)) < 1e-9


def test_truthfulqa_constructions():
    mc1, mc2 = task_docs.truthfulqa_mc1(), task_docs.truthfulqa_mc2()
    assert len(mc1) == len(mc2) == 817
    rows = task_docs._truthfulqa_rows()
    for doc, row in zip(mc1, rows):
        assert doc["choices"][doc["label"]] == row[2]  # the best answer
        assert doc["choices"].count(row[2]) == 1
    positions = Counter(d["label"] for d in mc1)
    assert positions[0] < 0.5 * len(mc1)  # the right answer is not parked first
    for doc in mc2:
        assert 1 <= doc["n_true"] < len(doc["choices"])
        assert len(set(doc["choices"])) == len(doc["choices"])


def test_toxigen_statements():
    docs = task_docs.toxigen()
    labels = Counter(d["label"] for d in docs)
    assert labels[0] > 100 and labels[1] > 100
    assert len({(d["group"], d["text"]) for d in docs}) == len(docs)
    assert all(d["text"] and not d["text"].startswith("-") for d in docs)
    assert len({d["group"] for d in docs}) == 16


def test_refusal_phrases_and_prompt():
    assert is_refusal("I’m sorry, but I can’t help with that.")
    assert is_refusal("As an AI, I must decline.")
    assert not is_refusal("Sure, here is a script that")
    assert not is_refusal("")
    assert len(task_docs.advbench()) == 520
    assert advbench_prompt(None, "Do X") == "User: Do X\nAssistant:"


def test_mc2_and_parsed_accuracy_functions():
    doc = {"n_true": 1}
    assert task_docs.mc2_true_mass(doc, [(0.0, True), (0.0, False)])["mc2"] == 0.5
    assert abs(task_docs.mc2_true_mass(doc, [(-1000.0, 0), (0.0, 0)])["mc2"]) < 1e-12
    assert task_docs.parsed_accuracy([(True, True), (False, True), (False, False)]) == 0.5
    assert math.isnan(task_docs.parsed_accuracy([(False, False)]))
    said = task_docs.prune_true_false({"label": 1}, [" False"])
    assert said == {"acc": (True, True), "parsed": 1.0}
