"""SORA (EXPERIMENTAL): selective outlier re-editing, after arXiv 2403.07825 ("SORA", later
"SIR"). The paper's method text and code were not recovered; this is our reconstruction of
spec §4.2, built on seqedit's GORA reconstruction (`seqedit.metrics.gora`).

After the editor proposes an edit (MEMIT: per layer ΔW = R Vᵀ, V = (λC + K Kᵀ)⁻¹K, keys K in
`Delta.keys`), SORA
  1. reads the GORA probe states with and without the proposal (forward hooks, weights
     untouched) and flags outliers by GORA's rule on dᵢ = ‖h⁺ᵢ − hᵢ‖/‖hᵢ‖ — the probes this edit
     moves unusually far — at most `max_outliers` (m), largest first;
  2. re-solves each edited layer jointly for the edit and the outliers, MEMIT-style: the
     outliers' keys K_O (bare prompt, subject's last token, on the model before the edit) with
     preservation targets — their values before the edit, i.e. residual R_O = −ΔW K_O, the
     drift to undo —

        ΔW' = [R, R_O] [K, K_O]ᵀ (λC + K Kᵀ + K_O K_Oᵀ)⁻¹;

  3. records GORA's change scores of the proposal and of the re-solve (mean over all probes
     and over the outliers) so the ledger shows what SORA bought.
The joint solve is per layer on keys read before the edit (MEMIT re-reads keys after each
lower layer's update); that first-order simplification is part of the reconstruction.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from ..editors import _solve
from ..editors import keys as _keys
from ..editors.base import Delta, LayerDelta, SolveError
from ..metrics.gora import GoraConfig, GoraEvaluator
from .base import GuardBase, GuardConfig, GuardContext, GuardError, record, require_plain_memit


@dataclass
class SoraConfig(GoraConfig, GuardConfig):
    """GORA's options (`seqedit.metrics.gora.GoraConfig`, validated there) choose the probes and
    the outlier rule; max_outliers = m, the most probes re-edited per step. SORA reads only the
    probes' states, never GORA's teacher-forced answers, so `answers` stays False."""

    guard = "sora"

    max_outliers: int = 8
    answers: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.answers is not False:
            raise ValueError("answers must be False (SORA does not read GORA's answers)")
        if self.max_outliers < 1:
            raise ValueError(f"max_outliers must be an int >= 1, got {self.max_outliers!r}")


class SoraGuard(GuardBase):
    name = "sora"

    def __init__(self, **options: Any) -> None:
        try:
            self.config = SoraConfig.from_dict(options)
        except GuardError:
            raise
        except ValueError as err:
            raise GuardError(f"sora: {err}") from None
        self._gora = GoraEvaluator(self.config)
        self._prepared = False

    def bind(self, editor: Any, spec: Any) -> None:
        require_plain_memit("sora", editor)

    def _prepare(self, ctx: GuardContext) -> None:
        from ..metrics.base import EvalContext

        names = tuple(ctx.spec.mlp_out_weight_name(i) for i in ctx.editor.config.layers)
        self._ectx = EvalContext(ctx.edit_ctx.tokenizer, ctx.spec, weights=names,
                                 base_weight=ctx.base_weight, unedited=ctx.unedited)
        with ctx.unedited():
            self._gora.prepare(ctx.model, self._ectx)
        self._prepared = True

    def _states(self, ctx: GuardContext, delta: Delta | None) -> torch.Tensor:
        with _added(ctx, delta):
            return self._gora.probe_states(ctx.model, self._ectx)

    def guard(self, delta: Delta, requests: list, ctx: GuardContext) -> Delta:
        if not self._prepared:
            self._prepare(ctx)
        probes = self._gora.probes
        before = self._states(ctx, None)
        d = self._gora.change_scores(before, self._states(ctx, delta))
        flagged = self._gora.outliers(d)
        chosen = flagged[:self.config.max_outliers]
        entry = {"outliers": [probes[i].case_id for i in chosen], "n_flagged": len(flagged),
                 "change_mean_proposed": float(d.mean())}
        if not chosen:
            record(delta, self.name, entry | {"re_solved": False})
            return delta
        out = self._resolve(delta, [probes[i] for i in chosen], ctx)
        after = self._gora.change_scores(before, self._states(ctx, out))
        entry |= {"re_solved": True, "change_mean_sora": float(after.mean()),
                  "outlier_change_proposed": float(d[chosen].mean()),
                  "outlier_change_sora": float(after[chosen].mean())}
        record(out, self.name, entry)
        return out

    def _resolve(self, delta: Delta, outliers: list, ctx: GuardContext) -> Delta:
        cfg, spec = ctx.editor.config, ctx.spec
        lam = cfg.mom2_update_weight
        layers = {spec.mlp_out_weight_name(i): i for i in cfg.layers}
        keys_o = _keys.compute_keys(ctx.model, spec, ctx.edit_ctx.tokenizer, outliers,
                                    (("{}",),), sorted(layers.values()))
        out = []
        for d in delta.layers:
            if d.name not in delta.keys or d.name not in layers:
                raise SolveError(f"SORA: the proposal for {d.name} carries no keys to re-solve with")
            layer = layers[d.name]
            k_e = delta.keys[d.name].to(torch.float64)
            k_o = keys_o[layer].to(torch.float64).T.cpu()
            u, v = d.u.to(torch.float64), d.v.to(torch.float64)
            r_o = -(u @ (v.T @ k_o))
            k = torch.cat([k_e, k_o], 1)
            c = _solve.second_moment(ctx.edit_ctx, layer, k.shape[0]).to(torch.float64).cpu()
            chol, problem = _solve.spd_factor(lam * c + k @ k.T)
            if problem is not None:
                raise SolveError(f"SORA at layer {layer}: λ·C + KKᵀ with the outliers' keys {problem}")
            out.append(LayerDelta(d.name, torch.cat([u, r_o], 1).float(),
                                  torch.cholesky_solve(k, chol).float(), d.transposed))
        return Delta(delta.method, out, dict(delta.keys), dict(delta.info), dict(delta.state))


@contextlib.contextmanager
def _added(ctx: GuardContext, delta: Delta | None):
    if delta is None:
        yield
        return
    layers = {ctx.spec.mlp_out_weight_name(i): i for i in ctx.editor.config.layers}
    factors = {layers[d.name]: (d.u.float(), d.v.float()) for d in delta.layers}
    with _keys.added_deltas(ctx.model, ctx.spec, factors):
        yield
