"""`scoring.read_prompts` (one prefill per prompt, targets and greedy continuation from its cache)
against float64 references that run every (prompt, target) and every greedy step as one unpadded
full forward, on every tiny architecture, with random prompts and targets of awkward lengths."""
from __future__ import annotations

import random

import pytest
import torch
from seqedit.editors._text import target_ids
from seqedit.metrics import scoring
from seqedit.models import TINY_ARCHS, tiny

WORDS = ["alpha", "Berlin", "x", "the", "of", "Zürich", "Q:", "capital", "7", "is", "ñ", "river"]


def random_queries(seed: int, n: int) -> list[scoring.Query]:
    rng = random.Random(seed)
    queries = []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))
        # " " is one byte token: a batch mixes one-token tails with long ones.
        targets = tuple(rng.choice([" ", "Paris", "a b", rng.choice(WORDS)])
                        for _ in range(rng.randint(0, 3)))
        queries.append(scoring.Query(prompt, targets, rng.choice([0, 1, 2, 5])))
    return queries


@torch.no_grad()
def reference_score(model, tok, prompt: str, target: str) -> tuple[float, list[int], list[bool]]:
    head, tail = list(tok(prompt)["input_ids"]), target_ids(tok, target)
    logp = model(input_ids=torch.tensor([head + tail[:-1]])).logits[0].log_softmax(-1)
    rows = logp[len(head) - 1:]
    chosen = rows[torch.arange(len(tail)), torch.tensor(tail)]
    top = rows.argmax(-1)
    return float(chosen.mean()), top.tolist(), (top == torch.tensor(tail)).tolist()


@torch.no_grad()
def reference_greedy(model, tok, prompt: str, budget: int) -> list[int]:
    ids = list(tok(prompt)["input_ids"])
    out = []
    for _ in range(budget):
        token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if token == tok.eos_token_id:
            break
        out.append(token)
        ids.append(token)
    return out


def models():
    for arch in TINY_ARCHS:
        yield pytest.param(arch, {}, id=arch)
    # A window shorter than the prompts: the cache's sliding layers must still agree.
    yield pytest.param("gemma3", {"sliding_window": 6}, id="gemma3-window6")


@pytest.mark.parametrize(("arch", "dims"), list(models()))
def test_read_prompts_matches_unpadded_full_forwards(arch, dims):
    model, tok = tiny(arch, seed=3, **dims)
    model = model.double()
    queries = random_queries(seed=len(arch), n=13)
    got = scoring.read_prompts(model, tok, queries, batch_size=5)  # a short last batch
    assert len(got) == len(queries)
    for q, reading in zip(queries, got):
        assert len(reading.scores) == len(q.targets)
        for target, score in zip(q.targets, reading.scores):
            logprob, top, hits = reference_score(model, tok, q.prompt, target)
            assert score.logprob == pytest.approx(logprob, rel=1e-9, abs=1e-9)
            assert list(score.top_tokens) == top
            assert list(score.token_hits) == hits
        assert list(reading.generated) == reference_greedy(model, tok, q.prompt, q.budget)


def test_shared_prompt_pairs_and_plain_generation_agree_with_read_prompts(llama):
    model, tok = llama
    model = model.double()
    queries = [q for q in random_queries(seed=11, n=9) if q.targets]
    pairs = [(q.prompt, t) for q in queries for t in q.targets]
    readings = scoring.read_prompts(model, tok, queries, batch_size=4)
    flat = [s for r in readings for s in r.scores]
    assert [s.logprob for s in scoring.score_targets(model, tok, pairs, batch_size=3)] == \
        pytest.approx([s.logprob for s in flat], rel=1e-9)
    budgets = [3, 0, 4, 1, 2, 5, 0, 2, 3][:len(queries)]
    generated = scoring.generate_greedy(model, tok, [q.prompt for q in queries],
                                        max_new_tokens=budgets, batch_size=2)
    assert generated == [reference_greedy(model, tok, q.prompt, b)
                         for q, b in zip(queries, budgets)]


def test_bad_budget_is_refused(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="budget"):
        scoring.read_prompts(model, tok, [scoring.Query("a", (), -1)])
    with pytest.raises(ValueError, match="one per prompt"):
        scoring.generate_greedy(model, tok, ["a", "b"], max_new_tokens=[1])


def test_a_small_logits_budget_splits_the_tail_forwards_without_changing_a_score(llama,
                                                                                 monkeypatch):
    model, tok = llama
    model = model.double()
    queries = random_queries(seed=5, n=12)
    whole = scoring.read_prompts(model, tok, queries, batch_size=6)
    monkeypatch.setattr(scoring, "LOGITS_BYTES", 1)  # one tail per forward
    split = scoring.read_prompts(model, tok, queries, batch_size=6)
    assert [s.logprob for r in split for s in r.scores] == \
        pytest.approx([s.logprob for r in whole for s in r.scores], rel=1e-12)
    assert [r.generated for r in split] == [r.generated for r in whole]
