"""The before/after probabilities every ledger line carries, read with `scoring.score_targets`
(so they follow the editors' own text convention, `seqedit.editors._text`)."""
from __future__ import annotations

from typing import Any

import torch

from .scoring import score_targets


def request_probabilities(model: torch.nn.Module, tokenizer: Any, requests: list) -> list[dict]:
    """{"new": P(target_new), "true": P(target_true) or None, "new_argmax": bool} per request,
    all requests in one batched pass; P is the per-token geometric mean under teacher forcing."""
    pairs, owners = [], []
    for i, req in enumerate(requests):
        for which in ("new", "true"):
            target = req.target_new if which == "new" else req.target_true
            if target is not None:
                pairs.append((req.filled_prompt, target))
                owners.append((i, which))
    rows: list[dict] = [{"new": None, "true": None, "new_argmax": None} for _ in requests]
    for (i, which), score in zip(owners, score_targets(model, tokenizer, pairs)):
        rows[i][which] = score.prob
        if which == "new":
            rows[i]["new_argmax"] = score.argmax
    return rows


def success(req: Any, post: dict) -> bool:
    """CounterFact efficacy when the old answer is known: P(new) > P(true) after the edit;
    otherwise every target_new token must be the argmax (EasyEdit's strict reading)."""
    if req.target_true is not None:
        return post["new"] > post["true"]
    return bool(post["new_argmax"])
