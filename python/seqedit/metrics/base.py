"""The Evaluator seam: what a damage measurement computes, and how every number is labelled.

An evaluator is prepared once on the *unedited* weights (`prepare`: cache reference predictions,
probe states, baseline scores) and then measures the model whenever the session asks
(`evaluate`): on the unedited model (step 0), every `eval_every` steps, at the end of `edit()` and
on `session.evaluate()`. An evaluator may also define `after_edit(model, ctx, requests)`, which the
session calls inside every edit step, right after the weights moved; its result is stored in the
edit's own ledger line (the *after-each* schedule).

Every number is a `Metric` that carries its protocol: which family (binary / token /
generation / ...), which schedule (after-each / after-all), which prompts, and how it aggregates.
Numbers without a label are how today's tools mix up their metrics; there are none here.

`EvalContext` is what the session lends an evaluator: the tokenizer and model layout, the names of
the matrices the editor edits, their base weights W₀, a way to run code on the unedited model
(`with ctx.unedited(): ...` swaps W₀ in and back, bit-exactly, without arithmetic), the requests of
the live edits, and a cache directory.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

AFTER_EACH, AFTER_ALL = "after-each", "after-all"


@dataclass(frozen=True)
class Metric:
    """One labelled number.

    name: what it is ("efficacy", "locality", "sigma_max_ratio", "wikitext.word_perplexity").
    value: the number (None when it could not be measured; `note` says why).
    protocol: how it was measured, e.g. {"family": "binary", "schedule": "after-all",
      "prompts": "paraphrase"}; `label` renders it. Keys are free, values JSON scalars.
    n: how many items the value aggregates; stderr: its standard error when meaningful.
    """

    name: str
    value: float | None
    protocol: dict[str, Any] = field(default_factory=dict)
    n: int | None = None
    stderr: float | None = None
    note: str | None = None

    @property
    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.protocol.items())]
        return f"{self.name} [{', '.join(parts)}]" if parts else self.name

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "value": self.value, "protocol": dict(self.protocol)}
        for key in ("n", "stderr", "note"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metric:
        return cls(data["name"], data.get("value"), dict(data.get("protocol") or {}),
                   data.get("n"), data.get("stderr"), data.get("note"))


@dataclass
class EvalResult:
    """What one evaluator measured at one point of a run.

    step: the session's step count when measured (0 = unedited); live_edits: how many edits were
    in the model. info: JSON-safe extras (alarms, outlier sets, per-item details).
    """

    evaluator: str
    metrics: list[Metric]
    step: int = 0
    live_edits: int = 0
    schedule: str = AFTER_ALL
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, **protocol: Any) -> Metric:
        """The one metric called `name` whose protocol contains `protocol`; KeyError otherwise."""
        found = [m for m in self.metrics if m.name == name
                 and all(m.protocol.get(k) == v for k, v in protocol.items())]
        if len(found) != 1:
            labels = [m.label for m in self.metrics if m.name == name]
            raise KeyError(f"{self.evaluator}: {len(found)} metrics match {name!r} {protocol}; "
                           f"it has {labels or 'none by that name'}")
        return found[0]

    def value(self, name: str, **protocol: Any) -> float | None:
        return self.get(name, **protocol).value

    def to_dict(self) -> dict[str, Any]:
        return {"evaluator": self.evaluator, "step": self.step, "live_edits": self.live_edits,
                "schedule": self.schedule, "seconds": self.seconds,
                "metrics": [m.to_dict() for m in self.metrics], "info": self.info}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        return cls(data["evaluator"], [Metric.from_dict(m) for m in data.get("metrics", [])],
                   data.get("step", 0), data.get("live_edits", 0),
                   data.get("schedule", AFTER_ALL), data.get("seconds", 0.0),
                   dict(data.get("info") or {}))


@dataclass
class EvalContext:
    """What the session lends an evaluator (see the module doc).

    weights: names of the matrices the editor edits (those with a base copy in `base_weight`).
    step / live_edits: where the run is now. live_requests(): the EditRequests of the live edits,
    in the order they were applied (for the after-all / retention schedule).
    unedited(): a context manager under which the model carries its base weights.
    """

    tokenizer: Any
    spec: Any  # seqedit.models.ModelSpec
    weights: tuple[str, ...] = ()
    base_weight: Callable[[str], torch.Tensor] | None = None
    unedited: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    live_requests: Callable[[], list] = list
    step: int = 0
    live_edits: int = 0
    seed: int = 0
    cache_dir: Path | None = None
    memo: dict[str, Any] = field(default_factory=dict)

    def require_base_weight(self, name: str) -> torch.Tensor:
        if self.base_weight is None:
            raise ValueError("this evaluator needs the base weights W0 of the edited matrices; "
                             "run it through an EditSession (which keeps them) or pass "
                             "`base_weight=` to the EvalContext")
        return self.base_weight(name)


@runtime_checkable
class Evaluator(Protocol):
    """A damage measurement. `prepare` runs once on the unedited weights; `evaluate` must not
    change the model (tests check that the weights stay bit-identical)."""

    name: str
    config: Any  # a dataclass; its fields are recorded next to every result

    def prepare(self, model: torch.nn.Module, ctx: EvalContext) -> None: ...

    def evaluate(self, model: torch.nn.Module, ctx: EvalContext) -> EvalResult: ...


def config_dict(config: Any) -> dict[str, Any]:
    """JSON-safe form of an evaluator config (a dataclass) for the ledger."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    raise TypeError(f"evaluator configs must be dataclasses, got {type(config).__name__}")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def configure(config_cls: type, options: dict[str, Any], evaluator: str) -> Any:
    """`config_cls(**options)` with unknown keys named (and the known ones listed)."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"evaluator {evaluator!r}: unknown option(s) {unknown}; "
                         f"known: {sorted(known)}")
    return config_cls(**options)


def iter_batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
