"""Runs for the report tests: tiny-model sessions with scripted evaluators."""
from __future__ import annotations

from dataclasses import dataclass

from seqedit import EditSession, metrics
from seqedit.data import EditRequest
from seqedit.metrics import EvalResult, Metric
from seqedit.models import tiny

DOCS = [f"Document {i}: the river flows north through the old city where the king was born. "
        * (i % 5 + 1) for i in range(60)]
FAST = {"v_num_grad_steps": 8, "context_template_starts": ("The", "I"),
        "context_template_length": 4}


def make_requests(n: int, start: int = 0) -> list[EditRequest]:
    cities = ["Paris", "Rome", "Berlin", "Madrid", "Vienna", "Oslo", "Lima", "Cairo"]
    return [EditRequest(prompt="The capital of {} is", subject=f"Country {i}",
                        target_new=cities[i % len(cities)],
                        target_true=cities[(i + 3) % len(cities)], case_id=i,
                        paraphrase_prompts=[f"Country {i}'s capital city is"],
                        neighborhood_prompts=[("The capital of Spain is", "Madrid")])
            for i in range(start, start + n)]


@dataclass(frozen=True)
class ScriptedConfig:
    name: str = "general"


class Scripted:
    """Reports what the general (lm-eval) or GORA evaluator would, as a function of the step."""

    def __init__(self, name: str):
        self.name = name
        self.config = ScriptedConfig(name)

    def prepare(self, model, ctx):
        pass

    def evaluate(self, model, ctx):
        s = ctx.live_edits
        if self.name == "gora":
            proto = {"family": "gora", "reading": "B", "experimental": True}
            return EvalResult("gora", [Metric("impact", 0.01 * s, proto),
                                       Metric("ged", 0.02 * s, {**proto, "reading": "A"})])
        lm = {"family": "general", "harness": "scripted", "limit": 5, "num_fewshot": 0}
        info = {"wikitext": {"primary": "word_perplexity", "chance": None, "unedited": 30.0},
                "sst2": {"primary": "acc", "chance": 0.5, "unedited": 0.6}}
        return EvalResult("general", [
            Metric("wikitext.word_perplexity", 30.0 + s, {**lm, "task": "wikitext",
                                                         "metric": "word_perplexity"}),
            Metric("sst2.acc", 0.6 - 0.01 * s, {**lm, "task": "sst2", "metric": "acc"}),
            Metric("sst2.modal_share", 0.7, {**lm, "task": "sst2", "metric": "modal_share"})],
            info=info)


def evaluators():
    return [metrics.create("editing", fluency_prompts=2, fluency_tokens=5),
            metrics.create("health", alarm_sigma_ratio=1e9, alarm_l1_growth=1e9,
                           alarm_condition_ratio=1e9),
            Scripted("general"), Scripted("gora")]


def make_run(directory, *, steps=3, batch=2, with_evaluators=True, guards=None):
    model, tok = tiny("llama", seed=0)
    stats = {"corpus": DOCS, "max_tokens": 3000, "cache_dir": directory.parent / "stats-cache",
             "progress": False}
    with EditSession(model, tok, "memit", layers=[0, 1], ledger_dir=directory,
                     stats_options=stats, guards=guards,
                     evaluators=evaluators() if with_evaluators else None,
                     eval_every=2 if with_evaluators else None, **FAST) as session:
        if steps:
            session.edit(make_requests(steps * batch), batch_size=batch, progress=False)
    return directory


