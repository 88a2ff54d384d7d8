"""General ability through lm-evaluation-harness, in-process on the (edited) model in memory.

    metrics.create("general", tasks=["wikitext", "boolq", "sst2"], limit=200)

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

from .suite import SuiteConfig, SuiteEvaluator

GENERAL_TASKS = ("wikitext", "boolq", "sst2", "mrpc", "rte", "cola", "mmlu", "mmlu_cloze",
                 "commonsenseqa", "commonsenseqa_cloze", "gsm8k", "prune_reasoning", "prune_nli")
QUICK_PROBE = ("wikitext", "boolq", "sst2")


@dataclass
class GeneralConfig(SuiteConfig):
    tasks: tuple[str, ...] = QUICK_PROBE


class GeneralEvaluator(SuiteEvaluator):
    """`GeneralEvaluator(tasks=..., limit=200, seed=0, batch_size=16)`; see `SuiteConfig`."""

    name = "general"
    config_cls = GeneralConfig
    known_tasks = GENERAL_TASKS
