"""The evaluator registry: names → evaluator classes, open through `register_evaluator` (see
`seqedit._registry`). Built-ins are imported on first use, so importing `seqedit.metrics` does
not import lm-evaluation-harness; evaluators keep their own state in their objects."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._registry import Registry

EVALUATORS = Registry("evaluator", {
    "editing": "seqedit.metrics.editing:EditingEvaluator",
    "health": "seqedit.metrics.health:HealthEvaluator",
    "gora": "seqedit.metrics.gora:GoraEvaluator",
    "general": "seqedit.metrics.general:GeneralEvaluator",
    "safety": "seqedit.metrics.safety:SafetyEvaluator",
})


def register_evaluator(name: str, factory: Callable[..., Any]) -> None:
    """Make `create(name, **options)` call `factory(**options)`; `factory` is usually an
    Evaluator class. A name already taken (built-in or registered) raises ValueError."""
    EVALUATORS.check_name(name, "register_evaluator")
    if not callable(factory):
        raise TypeError(f"register_evaluator({name!r}, ...): factory must be callable")
    EVALUATORS.add(name, factory, "register_evaluator")


def available() -> list[str]:
    return list(EVALUATORS)


def create(name: str, **options: Any) -> Any:
    """An evaluator by registry name, e.g. `create("general", tasks=["wikitext"], limit=200)`."""
    return EVALUATORS.lookup(name)(**options)
