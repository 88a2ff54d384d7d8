"""The Editor seam: what every editing method computes and what the session applies.

An editor turns a batch of requests into a `Delta` — low-rank factors per weight — without
touching the model. The session validates, applies (one fused `rank_update_list_` call), logs and
can roll back. Editors that keep state across edits (AlphaEdit's running Σ KKᵀ) expose it through
`commit`/`revert`, driven by what the Delta carries in `keys`, so the session can rebuild that state
from its ledger after a crash.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch


class SolveError(ValueError):
    """The numbers of this edit cannot be solved safely (singular, indefinite or ill-conditioned
    statistics, statistics of the wrong shape or dtype, a non-finite intermediate). Raised by
    `Editor.compute` before anything changes; the session records the edit as refused with
    `reason` and goes on (`strict=True` raises). Bad *configuration* is not a SolveError: it is
    a ValueError at construction time."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class LayerDelta:
    """ΔW = u @ v.T in the mathematical [out, in] orientation, whatever the storage layout.

    `transposed` records that the parameter is stored [in, out] (GPT-2 Conv1D), so the session
    passes it to `rank_update_` and nobody else has to think about it.
    """

    name: str
    u: torch.Tensor  # [d_out, k]
    v: torch.Tensor  # [d_in, k]
    transposed: bool = False

    def __post_init__(self) -> None:
        if self.u.ndim != 2 or self.v.ndim != 2 or self.u.shape[1] != self.v.shape[1]:
            raise ValueError(
                f"LayerDelta {self.name!r}: u must be [d_out,k] and v [d_in,k] with the same k, "
                f"got u{tuple(self.u.shape)} v{tuple(self.v.shape)}"
            )

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    def dense(self) -> torch.Tensor:
        """ΔW as a dense [out, in] matrix (float32 at least)."""
        dtype = torch.promote_types(self.u.dtype, torch.float32)
        return self.u.to(dtype) @ self.v.to(dtype).T

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.u).all() and torch.isfinite(self.v).all())


@dataclass
class Delta:
    """One edit step's weight change, plus what stateful editors need to replay or revert it."""

    method: str
    layers: list[LayerDelta]
    keys: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    # Tensors a guard needs to rebuild its state from the ledger (D4S: each layer's residual).
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def is_finite(self) -> bool:
        return all(layer.is_finite() for layer in self.layers) and all(
            bool(torch.isfinite(k).all()) for k in self.keys.values()
        )

    def non_finite_reason(self) -> str | None:
        for layer in self.layers:
            if not layer.is_finite():
                return f"non-finite factors for {layer.name}"
        for name, k in self.keys.items():
            if not bool(torch.isfinite(k).all()):
                return f"non-finite keys for {name}"
        return None

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat name → tensor mapping for safetensors (contiguous CPU copies)."""
        out: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            out[f"delta.{layer.name}.u"] = layer.u.detach().cpu().contiguous()
            out[f"delta.{layer.name}.v"] = layer.v.detach().cpu().contiguous()
        for name, k in self.keys.items():
            out[f"keys.{name}"] = k.detach().cpu().contiguous()
        for name, t in self.state.items():
            out[f"state.{name}"] = t.detach().cpu().contiguous()
        return out

    @classmethod
    def from_tensors(
        cls,
        method: str,
        tensors: dict[str, torch.Tensor],
        transposed: dict[str, bool],
        info: dict[str, Any] | None = None,
    ) -> "Delta":
        """Inverse of `to_tensors`; `transposed` maps layer name → storage flag (from the ledger)."""
        layers = [
            LayerDelta(name, tensors[f"delta.{name}.u"], tensors[f"delta.{name}.v"], transposed[name])
            for name in transposed
        ]
        keys = {n[len("keys."):]: t for n, t in tensors.items() if n.startswith("keys.")}
        state = {n[len("state."):]: t for n, t in tensors.items() if n.startswith("state.")}
        return cls(method, layers, keys, dict(info or {}), state)

    def plus(self, other: "Delta") -> "Delta":
        """This change followed by `other` as one Delta: factors of a weight both touch are
        concatenated (ΔW = [U₁ U₂][V₁ V₂]ᵀ), keys and state kept from `self`; `info` is copied
        one level deep, so a guard recording into the result leaves `self`'s records alone."""
        layers = list(self.layers)
        where = {d.name: i for i, d in enumerate(layers)}
        for d in other.layers:
            if d.name not in where:
                where[d.name] = len(layers)
                layers.append(d)
                continue
            a = layers[where[d.name]]
            layers[where[d.name]] = LayerDelta(a.name, torch.cat([a.u, d.u.to(a.u.dtype)], 1),
                                               torch.cat([a.v, d.v.to(a.v.dtype)], 1), a.transposed)
        info = {k: dict(v) if isinstance(v, dict) else v for k, v in self.info.items()}
        return Delta(self.method, layers, dict(self.keys), info, dict(self.state))


@dataclass
class EditContext:
    """What an editor may use besides the model and the requests.

    `second_moment(layer)` returns C = E[k kᵀ] (float64, [d_in, d_in]) for a layer, computed or
    loaded lazily by the owner; `memo` is per-session scratch space (context templates,
    projectors) so nothing is cached in module globals.
    """

    tokenizer: Any
    spec: Any  # seqedit.models.ModelSpec
    second_moment: Callable[[int], torch.Tensor] | None = None
    seed: int = 0
    memo: dict[str, Any] = field(default_factory=dict)

    def derived(self, key: tuple, source: torch.Tensor, build: Callable[[torch.Tensor], Any]) -> Any:
        """`build(source)` memoised under `key`, rebuilt when the provider hands out another tensor
        or the same one changed in place: factorisations of C are computed once per session, not
        once per edit."""
        hit = self.memo.get(key)
        if hit is None or hit[0] is not source or hit[1] != source._version:
            hit = self.memo[key] = (source, source._version, build(source))
        return hit[2]

    def require_second_moment(self, layer: int) -> torch.Tensor:
        if self.second_moment is None:
            raise ValueError(
                "this editor needs key statistics C = E[kkᵀ]; give the session a `second_moment` "
                "provider (EditSession does this through seqedit.stats.second_moments)"
            )
        return self.second_moment(layer)


@runtime_checkable
class Editor(Protocol):
    """An editing method. `compute` must not mutate the model (tests check this).

    `layers`: the sorted indices of the layers whose MLP output projection its deltas change;
    the session fingerprints those base weights and computes their key statistics up front.
    `config`: a dataclass with `to_dict()` and `from_dict(data, spec)` (`config.EditorConfig`),
    so a session can record it and rebuild the editor from its ledger.
    """

    name: str
    config: Any
    layers: list[int]

    def compute(self, model: torch.nn.Module, requests: list, ctx: EditContext) -> Delta: ...

    def commit(self, delta: Delta) -> None:
        """Called after the session applied `delta` to the model."""

    def revert(self, delta: Delta) -> None:
        """Called after the session removed `delta` from the model (rollback)."""


class StatelessEditor:
    """Base for editors whose only effect is the Delta they return."""

    name = "stateless"

    def commit(self, delta: Delta) -> None:
        return None

    def revert(self, delta: Delta) -> None:
        return None

