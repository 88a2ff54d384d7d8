"""The session's key-statistics provider: C = E[kkᵀ] per layer, on the unedited weights only."""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import torch

log = logging.getLogger("seqedit.session")


def _matrix(value: Any) -> torch.Tensor:
    # seqedit.stats returns (C, token count); users may hand over C alone.
    return value[0] if isinstance(value, tuple) else value


class SecondMoments:
    """`layer -> C` for an EditContext.

    With no user source, statistics come from `seqedit.stats.second_moments`, all layers the
    editor is known to need in one pass at the first request. They must describe the *base*
    model: once the session has moved a weight, computing a new layer would silently measure
    the edited model, so that is refused (the session prefetches what a resumed ledger used
    before replaying, for the same reason).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any,
                 source: Callable[[int], Any] | dict | None, *, layers_hint: Iterable[int] = (),
                 options: dict[str, Any] | None = None, progress: bool = True) -> None:
        self._model, self._tokenizer = model, tokenizer
        self._source = source
        self._hint = sorted(set(layers_hint))
        self._options = dict(options or {})
        self._progress = progress
        self._cache: dict[int, torch.Tensor] = {}
        self.base_intact = True  # the session clears this when it first moves a weight

    @property
    def computed(self) -> set[int]:
        """Layers whose statistics this provider computed from the model (for the ledger)."""
        return set(self._cache) if self.computes else set()

    @property
    def computes(self) -> bool:
        """True when statistics are computed from the model (not handed over by the user)."""
        return self._source is None

    def __call__(self, layer: int) -> torch.Tensor:
        layer = int(layer)
        if layer in self._cache:
            return self._cache[layer]
        if isinstance(self._source, dict):
            if layer not in self._source:
                raise KeyError(f"no key statistics for layer {layer} in the `stats` dict given "
                               f"to the session (it has layers {sorted(self._source)})")
            self._cache[layer] = _matrix(self._source[layer])
        elif callable(self._source):
            self._cache[layer] = _matrix(self._source(layer))
        else:
            self.prefetch([layer, *self._hint])
        return self._cache[layer]

    def prefetch(self, layers: Iterable[int]) -> None:
        missing = sorted({int(i) for i in layers} - set(self._cache))
        if not missing or not self.computes:
            return
        if not self.base_intact:
            raise RuntimeError(
                f"key statistics for layer(s) {missing} were first requested after the session "
                "had edited the model, so they would describe the edited weights; pass "
                "`stats=` (a dict or a layer -> C callable computed on the base model) or start "
                "the session with an editor that declares its layers")
        from seqedit.stats import second_moments

        log.info("computing key statistics for layers %s on the unedited model", missing)
        options = {"progress": self._progress, **self._options}
        found = second_moments(self._model, self._tokenizer, missing, **options)
        for layer in missing:
            self._cache[layer] = _matrix(found[layer])
