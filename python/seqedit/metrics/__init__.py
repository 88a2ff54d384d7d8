"""Damage measurements: editing metrics, weight health, GORA, general ability and safety.

    from seqedit import metrics
    evaluators = [metrics.create("editing"), metrics.create("health"),
                  metrics.create("general", tasks=["wikitext", "boolq"], limit=200)]
    session = seqedit.EditSession(model, tok, method="memit", evaluators=evaluators, eval_every=100)

Each evaluator follows the seam in `base` (prepare on the unedited weights, evaluate on demand,
every number labelled with its protocol); `registry` names them. `docs/protocol.md` says exactly
what each metric computes. This package sits below `seqedit.session` and never imports it.
"""
from .base import AFTER_ALL, AFTER_EACH, EvalContext, EvalResult, Evaluator, Metric
from .registry import available, create, register_evaluator

__all__ = ["AFTER_ALL", "AFTER_EACH", "EvalContext", "EvalResult", "Evaluator", "Metric",
           "available", "create", "register_evaluator"]
