"""Editing metrics on a planted bigram LM: every expected value is known by construction."""
from __future__ import annotations

import contextlib

import pytest
import torch
from bigram import BigramLM, word_tokenizer
from seqedit import metrics
from seqedit.data import EditRequest
from seqedit.metrics.base import EvalContext

REQ = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome",
                  target_true="Paris", paraphrase_prompts=("Where people speak language of",),
                  neighborhood_prompts=(("Lyon twin city", "Madrid"),), case_id=1)


def context(model, requests, base_table=None):
    @contextlib.contextmanager
    def unedited():
        if base_table is None:
            yield
            return
        now = model.table.data
        model.table.data = base_table
        try:
            yield
        finally:
            model.table.data = now

    return EvalContext(tokenizer=word_tokenizer(), spec=None, unedited=unedited,
                       live_requests=lambda: list(requests), step=1, live_edits=len(requests))


def run(model, ctx, **options):
    ev = metrics.create("editing", portability=False, multihop=False, fluency_prompts=0,
                        **options)
    ev.prepare(model, ctx)
    return ev.evaluate(model, ctx)


def value(result, family, name, prompts):
    return result.value(name, family=family, prompts=prompts)


def test_model_that_prefers_target_new_scores_efficacy_one_in_every_family():
    model = BigramLM()
    model.prefer("is", "Rome", "Paris")
    model.prefer("of", "Rome", "Paris")
    result = run(model, context(model, [REQ]))
    for family in ("binary", "token", "generation"):
        assert value(result, family, "efficacy", "edit") == 1.0
        assert value(result, family, "generalization", "paraphrase") == 1.0
    assert result.get("efficacy", family="binary").protocol["schedule"] == "after-all"


def test_model_preferring_target_true_scores_zero():
    model = BigramLM()
    model.prefer("is", "Paris", "Rome")
    result = run(model, context(model, [REQ]))
    for family in ("binary", "token", "generation"):
        assert value(result, family, "efficacy", "edit") == 0.0


def test_teacher_forced_success_without_generated_success():
    # P(Rome) > P(Paris), but greedy decoding says "the ...": binary 1, token 0, generation 0.
    model = BigramLM()
    model.prefer("is", "the", "Rome", "Paris")
    result = run(model, context(model, [REQ]))
    assert value(result, "binary", "efficacy", "edit") == 1.0
    assert value(result, "token", "efficacy", "edit") == 0.0
    assert value(result, "generation", "efficacy", "edit") == 0.0
    assert result.value("margin", family="binary") > 0


def test_untouched_model_scores_locality_one():
    model = BigramLM()
    result = run(model, context(model, [REQ], base_table=model.table.data.clone()))
    for family in ("binary", "token", "generation"):
        assert value(result, family, "locality", "neighborhood") == 1.0


def test_locality_is_measured_against_the_unedited_model_not_the_ground_truth():
    model = BigramLM()
    model.prefer("city", "Madrid", "Rome")
    base = model.table.data.clone()
    model.prefer("city", "Berlin", "Madrid", "Rome")  # the "edit" moved the neighbour's answer
    before = model.table.data.clone()
    result = run(model, context(model, [REQ], base_table=base))
    # Still Madrid over Rome, as unedited: binary locality and specificity hold ...
    assert value(result, "binary", "locality", "neighborhood") == 1.0
    assert value(result, "binary", "specificity", "neighborhood") == 1.0
    # ... but the argmax and the greedy answer changed from the unedited model's.
    assert value(result, "token", "locality", "neighborhood") == 0.0
    assert value(result, "generation", "locality", "neighborhood") == 0.0
    assert value(result, "generation", "specificity", "neighborhood") == 0.0
    assert result.get("locality", family="token").protocol["reference"] == "unedited model"
    assert torch.equal(model.table.data, before)  # measuring moved nothing


def test_after_each_scores_the_step_requests_with_its_label():
    model = BigramLM()
    model.prefer("is", "Rome", "Paris")
    ev = metrics.create("editing", portability=False, multihop=False)
    ctx = context(model, [])
    ev.prepare(model, ctx)
    result = ev.after_edit(model, ctx, [REQ])
    assert result.schedule == "after-each"
    assert result.value("efficacy", family="binary") == 1.0
    assert result.info["items"][0]["case_id"] == 1
    assert metrics.create("editing", after_each=False).after_edit(model, ctx, [REQ]) is None


def test_retention_sample_is_seeded_and_bounded():
    model = BigramLM()
    reqs = [EditRequest(prompt="The capital of {} is", subject="France", target_new=t,
                        target_true="Paris", case_id=i)
            for i, t in enumerate(["Rome", "Berlin", "Madrid", "Lyon", "city"])]
    a = run(model, context(model, reqs), retention=2)
    b = run(model, context(model, reqs), retention=2)
    assert a.value("efficacy", family="binary") == b.value("efficacy", family="binary")
    assert a.get("efficacy", family="binary").n == 2
    assert run(model, context(model, reqs)).get("efficacy", family="binary").n == 5


def test_fluency_is_low_for_a_model_that_repeats_itself():
    model = BigramLM()
    for word in ("is", "Rome"):
        model.prefer(word, "Rome")
    ev = metrics.create("editing", portability=False, multihop=False, fluency_prompts=1,
                        fluency_tokens=12, families=("generation",))
    ctx = context(model, [REQ])
    ev.prepare(model, ctx)
    result = ev.evaluate(model, ctx)
    assert result.value("fluency", family="generation") == 0.0  # "Rome Rome Rome ..."
    assert all(m.protocol["family"] == "generation" for m in result.metrics)


@pytest.mark.parametrize("bad", [{"families": ("binary", "vibes")}, {"families": ()},
                                 {"retention": 0}, {"generation_slack": -1}, {"batch_size": 0},
                                 {"colour": "red"}])
def test_bad_options_name_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        metrics.create("editing", **bad)


def test_portability_and_multihop_come_from_the_packaged_benchmarks(llama):
    from seqedit import data

    model, tok = llama
    requests = data.load("zsre", limit=2) + data.load("mquake", limit=4)
    ev = metrics.create("editing", fluency_prompts=0)
    ctx = EvalContext(tokenizer=tok, spec=None, live_requests=lambda: requests)
    ev.prepare(model, ctx)
    result = ev.evaluate(model, ctx)
    assert result.get("portability", family="token").n == 2
    assert result.get("multihop", family="generation").n == 1  # the one complete MQuAKE case
    assert result.info["multihop_cases"] == 1
