"""D4S — "Dump for Sequence" (Huang et al., "Reasons and Solutions for the Decline in Model
Performance after Editing", arXiv 2410.23843; algorithm from the authors' code, spec §2).

D4S turns sequential MEMIT into one cumulative batch solve against the original weights W₀.
Per edited layer l it keeps, in float64, S_KK = Σ K Kᵀ and S_RK = Σ R Kᵀ over every edit so far,
and the model is always

    W_n = W₀ + Δ_n,    Δ_n = S_RK (λ C + S_KK)⁻¹.

Per step, as the original driver does: the targets are optimised on W₀ (the edited weights are
swapped for W₀ while the step is computed); the residual at the z-layer is computed once on W₀,
T = Z − H₀, and layer i of the band gets R_i = T / (|L| − i) (`recompute_residual` measures it per
layer instead, on the model as the layers below already are); the keys K_i are read with the
layers below at W₀ + Δ_n; then S_KK += K Kᵀ, S_RK += R Kᵀ and λC + S_KK is factored by Cholesky.
Blocks that normalise the MLP output (Gemma-2/3, MEMIT's targets "mlp_out") get a target per
layer, R_i = T_i − M_i(W₀), without division — MEMIT's per-layer form.

What the session applies is the change of Δ, which is exactly low rank although Δ is not:
from Δ_n A_n = S_RK,n with A_n = A_{n−1} + K Kᵀ,

    Δ_n − Δ_{n−1} = (R − Δ_{n−1} K) (A_n⁻¹ K)ᵀ,

so a step is a rank-b Delta (b = requests in the step), stored with its K and R so `commit`
rebuilds the accumulators from the ledger. Removing edit j is the same identity backwards,
Δ' − Δ = (Δ K_j − R_j)(A'⁻¹ K_j)ᵀ with A' = A − K_j K_jᵀ: `rollback` returns that correction and
the session records it. Memory: S_KK, S_RK and Δ per layer, constant in the number of edits.

Because the targets are optimised on W₀, they do not depend on earlier edits: the guard
optimises them for `target_batch` consecutive requests of the run at once (`plan` tells it the
run's requests; batches are cut by position in that list, so a resumed run cuts them alike).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from ..editors import keys as _keys
from ..editors import values as _values
from ..editors.base import Delta, LayerDelta, SolveError
from ..editors.memit import memit_factor, resolve_targets
from .base import GuardBase, GuardConfig, GuardContext, GuardError, record, require_plain_memit


@dataclass(frozen=True)
class D4SConfig(GuardConfig):
    """recompute_residual: measure each layer's residual on the partially updated model (as
    MEMIT does) instead of dividing the z-layer residual (the original: False). target_batch:
    requests whose targets are optimised together."""

    guard = "d4s"

    recompute_residual: bool = False
    target_batch: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.recompute_residual, bool):
            raise GuardError(f"d4s: recompute_residual must be True or False, got "
                             f"{self.recompute_residual!r}")
        if not (isinstance(self.target_batch, int) and not isinstance(self.target_batch, bool)
                and self.target_batch >= 1):
            raise GuardError(f"d4s: target_batch must be an int >= 1, got {self.target_batch!r}")


@dataclass
class _Layer:
    s_kk: torch.Tensor  # [d_in, d_in]
    s_rk: torch.Tensor  # [d_out, d_in]
    delta: torch.Tensor  # Δ = S_RK (λC + S_KK)⁻¹, [d_out, d_in]


def _factor(a: torch.Tensor, what: str) -> torch.Tensor:
    """Cholesky factor of λC + Σ KKᵀ. λC was checked once, finite and well-conditioned
    (`memit_factor`); adding the PSD Σ KKᵀ keeps it positive definite and can only raise its
    smallest eigenvalue, so a failure here means non-finite keys or corrupt state."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0 or not bool(torch.isfinite(chol).all()):
        raise SolveError(f"{what}: λ·C + Σ KKᵀ is not positive definite (Cholesky failed at "
                         f"column {int(info)}); the accumulated keys are not finite or corrupt")
    return chol


@contextlib.contextmanager
def _dense_added(model, spec, deltas: dict[int, torch.Tensor]):
    """mlp_out(l) computes (W + Δ_l) k for dense Δ_l [d_out, d_in], weights untouched."""
    def hook_for(d):
        def hook(module, args, out):
            return out + (args[0].to(d.dtype) @ d.T).to(out.dtype)
        return hook

    with contextlib.ExitStack() as stack:
        for layer, d in deltas.items():
            handle = spec.mlp_out(model, layer).register_forward_hook(hook_for(d.float()))
            stack.callback(handle.remove)
        yield


class D4SGuard(GuardBase):
    name = "d4s"

    def __init__(self, **options: Any) -> None:
        self.config = D4SConfig.from_dict(options)
        self._layers: dict[str, _Layer] = {}
        self._plan: list = []
        self._position: dict[int, int] = {}
        self._targets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # plan index → (z, R)

    def bind(self, editor: Any, spec: Any) -> None:
        require_plain_memit("d4s", editor)

    def solves(self) -> bool:
        return True

    def plan(self, requests: list) -> None:
        self._plan = list(requests)
        self._position = {id(r): i for i, r in enumerate(self._plan)}
        self._targets = {}

    # -- the step ---------------------------------------------------------------------------
    def solve(self, requests: list, ctx: GuardContext) -> Delta:
        cfg, spec, model = ctx.editor.config, ctx.spec, ctx.model
        if not requests:
            raise ValueError("no requests to edit")
        cfg.check(spec)
        lam = cfg.mom2_update_weight
        layers = sorted(cfg.layers)
        device = _keys.model_device(model)
        moments = {layer: memit_factor(ctx.edit_ctx, layer, lam, spec.mlp_hidden_size, "cpu")[0]
                   for layer in layers}
        out, state, info = [], {}, {}
        with ctx.unedited():
            mode = resolve_targets(model, ctx.edit_ctx, cfg)
            templates = _keys.context_templates(model, ctx.edit_ctx.tokenizer, ctx.edit_ctx,
                                                starts=cfg.context_template_starts,
                                                length=cfg.context_template_length)
            z, residual = self._residuals(requests, ctx, cfg, mode, templates, layers)
            reader = _keys.KeyReader(model, spec, ctx.edit_ctx.tokenizer, requests, templates,
                                     start=layers[0], upto=layers[-1])
            below: dict[int, torch.Tensor] = {}  # layer → Δ_n, for the reads of later layers
            for i, layer in enumerate(layers):
                name = spec.mlp_out_weight_name(layer)
                held = self._layer(name, spec)
                reads = self._reads(mode, layers, layer)
                with _dense_added(model, spec, below):
                    found = reader([layer], **reads)
                k = found[layer].to(torch.float64).T.cpu()  # [d_in, b]
                r = self._residual(found, z, residual, mode, layers, i)
                if not bool(torch.isfinite(k).all() and torch.isfinite(r).all()):
                    raise SolveError(f"D4S at layer {layer}: non-finite keys or residual")
                v = torch.cholesky_solve(k, _factor(lam * moments[layer] + held.s_kk + k @ k.T,
                                                    f"D4S at layer {layer}"))  # A_n⁻¹ K
                u = r - held.delta @ k
                below[layer] = (held.delta + u @ v.T).to(device)
                out.append(LayerDelta(name, u, v, bool(spec.mlp_out_transposed)))
                state[f"d4s.{name}.k"], state[f"d4s.{name}.r"] = k, r
                info[name] = {"residual_norm": float(r.norm()), "update_norm": float(u.norm() * v.norm())}
        delta = Delta(ctx.editor.name, out, {}, {"targets": mode}, state)
        record(delta, self.name, {"layers": info, "requests": len(requests),
                                  "recompute_residual": self.config.recompute_residual})
        return delta

    @staticmethod
    def _reads(mode: str, layers: list[int], layer: int) -> dict:
        if mode == "block":
            return {"blocks": [layers[-1]]}
        return {"mlp_outs": [layer]}

    def _residual(self, found, z, residual, mode, layers, i) -> torch.Tensor:
        """R_i [d_out, b]: the precomputed one, or (recompute_residual) measured now."""
        if not self.config.recompute_residual:
            return residual[:, i].T.contiguous()
        if mode == "block":
            h = found[("bare_block", layers[-1])].to(torch.float64).cpu()
            return ((z[:, 0] - h) / (len(layers) - i)).T.contiguous()
        m = found[("bare_mlp_out", layers[i])].to(torch.float64).cpu()
        return (z[:, i] - m).T.contiguous()

    def _residuals(self, requests, ctx, cfg, mode, templates, layers):
        """(z [b, 1 or |L|, d], R [b, |L|, d]) on W₀, float64: from the batch optimised ahead,
        optimising the batch of `target_batch` planned requests this one belongs to first."""
        index = [self._position.get(id(r)) for r in requests]
        if any(i is None for i in index):  # not planned: optimise these alone
            z, r = self._optimise(requests, ctx, cfg, mode, templates, layers)
            return z, r
        missing = sorted({i // self.config.target_batch for i in index if i not in self._targets})
        for chunk in missing:
            lo = chunk * self.config.target_batch
            members = list(range(lo, min(lo + self.config.target_batch, len(self._plan))))
            z, r = self._optimise([self._plan[j] for j in members], ctx, cfg, mode, templates,
                                  layers)
            for row, j in enumerate(members):
                self._targets[j] = (z[row], r[row])
        picked = [self._targets[i] for i in index]
        for i in set(index):
            del self._targets[i]
        return torch.stack([p[0] for p in picked]), torch.stack([p[1] for p in picked])

    @staticmethod
    def _optimise(requests, ctx, cfg, mode, templates, layers):
        spec, tok = ctx.spec, ctx.edit_ctx.tokenizer
        if mode == "block":
            res = _values.target_values(ctx.model, spec, tok, requests, templates,
                                        layer=layers[-1], site="block", cfg=cfg)
            z = res.v_star.to(torch.float64)[:, None]
            t = res.delta.to(torch.float64)
            r = torch.stack([t / (len(layers) - i) for i in range(len(layers))], 1)
        else:
            res = _values.target_values(ctx.model, spec, tok, requests, templates,
                                        layer=tuple(layers), site="mlp_out", cfg=cfg)
            z = res.v_star.to(torch.float64).reshape(len(requests), len(layers), -1)
            r = res.delta.to(torch.float64).reshape(len(requests), len(layers), -1)
        return z.cpu(), r.cpu()

    def _layer(self, name: str, spec) -> _Layer:
        if name not in self._layers:
            d_in, d_out = spec.mlp_hidden_size, spec.hidden_size
            z = torch.zeros
            self._layers[name] = _Layer(z(d_in, d_in, dtype=torch.float64),
                                        z(d_out, d_in, dtype=torch.float64),
                                        z(d_out, d_in, dtype=torch.float64))
        return self._layers[name]

    # -- state that follows the ledger --------------------------------------------------------
    def _parts(self, delta: Delta):
        """(LayerDelta, K, R) of each layer this guard solved, from a Delta it returned: its
        own columns come first (guards after it may have appended theirs)."""
        by_name = {d.name: d for d in delta.layers}
        for key, k in delta.state.items():
            if key.startswith("d4s.") and key.endswith(".k"):
                name = key[len("d4s."):-len(".k")]
                yield name, by_name[name], k.to(torch.float64), delta.state[f"d4s.{name}.r"].to(torch.float64)

    def commit(self, delta: Delta) -> None:
        self._accumulate(delta, +1, delta, +1)

    def revert(self, delta: Delta, undo: Delta | None = None) -> None:
        """Without `undo` the edit was subtracted as it was applied; with it, Δ moved by it."""
        self._accumulate(delta, -1, delta if undo is None else undo, -1 if undo is None else +1)

    def _accumulate(self, delta: Delta, sign: int, change: Delta, change_sign: int) -> None:
        changes = {d.name: d for d in change.layers}
        for name, _, k, r in self._parts(delta):
            held = self._layers.get(name)
            if held is None:
                d_in, d_out = k.shape[0], r.shape[0]
                held = self._layers[name] = _Layer(*(torch.zeros(*s, dtype=torch.float64)
                                                     for s in ((d_in, d_in), (d_out, d_in), (d_out, d_in))))
            b = k.shape[1]
            step = changes[name]
            held.s_kk += sign * (k @ k.T)
            held.s_rk += sign * (r @ k.T)
            u, v = step.u[:, :b].to(torch.float64), step.v[:, :b].to(torch.float64)
            held.delta += change_sign * (u @ v.T)

    def rollback(self, delta: Delta, ctx: GuardContext) -> Delta:
        lam = ctx.editor.config.mom2_update_weight
        out = []
        for name, _, k, r in self._parts(delta):
            held = self._layers[name]
            layer = next(i for i in ctx.editor.config.layers if ctx.spec.mlp_out_weight_name(i) == name)
            c = memit_factor(ctx.edit_ctx, layer, lam, k.shape[0], "cpu")[0]
            chol = _factor(lam * c.to(torch.float64) + held.s_kk - k @ k.T,
                           f"D4S rollback at {name} (without this edit)")
            out.append(LayerDelta(name, held.delta @ k - r, torch.cholesky_solve(k, chol),
                                  bool(ctx.spec.mlp_out_transposed)))
        return Delta(delta.method, out, {}, {"d4s_rollback": True})

    # -- inspection -----------------------------------------------------------------------------
    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per weight: S_KK, S_RK and Δ (copies), for inspection and tests."""
        return {n: {"s_kk": h.s_kk.clone(), "s_rk": h.s_rk.clone(), "delta": h.delta.clone()}
                for n, h in self._layers.items()}
