"""General ability through lm-evaluation-harness, in-process on the (edited) model in memory.

    metrics.create("general", tasks=["wikitext", "boolq", "sst2"], limit=200)
    metrics.create("general")   # the quick probe: wikitext (4 articles), sst2, commonsenseqa_cloze

Tasks (packaged, read from local files only; `docs/protocol-general.md` gives each prompt,
metric and chance level): wikitext (WikiText-2 perplexity), boolq, sst2, mrpc, rte, cola, mmlu
(1,516-question subset), commonsenseqa (both lettered, and as cloze: mmlu_cloze,
commonsenseqa_cloze, which small models can answer), gsm8k, and PRUNE's downstream tasks
prune_reasoning (GSM8K with the gold chain of thought) and prune_nli (RTE, "True or False?").
Each reports its scores with stderr, the share of its most common answer (muting), and in
`info` the unedited score, the chance level and the no-signal flag (`suite`).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from .suite import SuiteConfig, SuiteEvaluator

GENERAL_TASKS = ("wikitext", "boolq", "sst2", "mrpc", "rte", "cola", "mmlu", "mmlu_cloze",
                 "commonsenseqa", "commonsenseqa_cloze", "gsm8k", "prune_reasoning", "prune_nli")
# The quick probe: perplexity plus the two tasks on which a 135M model is clearly above chance
# (bench/RESULTS.md); BoolQ, for one, is no-signal and muted on the unedited SmolLM2-135M.
QUICK_PROBE = ("wikitext", "sst2", "commonsenseqa_cloze")


@dataclass(frozen=True)
class GeneralConfig(SuiteConfig):
    tasks: tuple[str, ...] = QUICK_PROBE


class GeneralEvaluator(SuiteEvaluator):
    """`GeneralEvaluator(tasks=..., limit=200, seed=0, batch_size=16)`; see `SuiteConfig`."""

    name = "general"
    config_cls = GeneralConfig
    known_tasks = GENERAL_TASKS
    default_task_limits = MappingProxyType({"wikitext": 4})  # whole articles, ~2,200 tokens each
