"""`SharedContextLM` gives lm-eval's HFLM log-likelihoods, sharing each context's forward."""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("lm_eval")
from lm_eval.models.huggingface import HFLM  # noqa: E402
from seqedit.metrics.harness_lm import SharedContextLM  # noqa: E402
from seqedit.models import tiny  # noqa: E402


def requests(tok, seed: int) -> list:
    """Multiple-choice groups (2–5 choices, some one token long), lone requests, a context too
    long for the window and an empty context, in shuffled order."""
    rng = random.Random(seed)
    out = []
    for g in range(7):
        context = list(tok(f"item {g}: " + "w" * rng.randint(1, 30))["input_ids"])
        for c in range(rng.randint(1, 5)):
            cont = [rng.randrange(3, 250) for _ in range(rng.choice([1, 1, 2, 4, 9]))]
            out.append(((f"ctx{g}", f"c{c}"), context, cont))
    long = [rng.randrange(3, 250) for _ in range(60)]
    out += [(("long", "a"), long, [5, 6]), (("long", "b"), long, [7])]
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_same_loglikelihoods_as_hflm(arch):
    model, tok = tiny(arch, seed=1, max_positions=64)
    model = model.double()
    reqs = requests(tok, seed=len(arch))
    ours = SharedContextLM(pretrained=model, tokenizer=tok, batch_size=3, max_length=61)
    theirs = HFLM(pretrained=model, tokenizer=tok, batch_size=3, max_length=61)
    got = ours._loglikelihood_tokens(reqs, disable_tqdm=True)
    want = theirs._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert [g[1] for g in got] == [w[1] for w in want]
    torch.testing.assert_close(torch.tensor([g[0] for g in got], dtype=torch.float64),
                               torch.tensor([w[0] for w in want], dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_lone_requests_batch_within_the_logits_budget(monkeypatch):
    import seqedit.metrics.harness_lm as harness_lm

    model, tok = tiny("llama", seed=1, max_positions=64)
    lm = SharedContextLM(pretrained=model, tokenizer=tok, batch_size=8, max_length=61)
    reqs = [(("c", "x"), [5] * 20, [6] * 40)]  # 60 tokens × 300-token vocabulary
    assert lm._bounded_batch(reqs, None) == 8
    monkeypatch.setattr(harness_lm, "LOGITS_BYTES", 3 * 60 * 300 * 8)
    assert lm._bounded_batch(reqs, None) == 3
    monkeypatch.setattr(harness_lm, "LOGITS_BYTES", 1)
    assert lm._bounded_batch(reqs, None) == 1
