"""Weight health of every edited matrix: the early warning of collapse no other tool gives.

Per edited matrix W (base W₀, accumulated change ΔW = W − W₀ as the weights store it):
σ_max(W), σ_max(ΔW)/σ_max(W₀) (PRUNE: trouble starts when ΔW's top singular value outgrows
W₀'s), mean|W| and its ratio to mean|W₀| (D4S's "L1 norm of the editing layer"), ‖ΔW‖_F and
‖ΔW‖_F/‖W₀‖_F, and on the after-all schedule the exact condition number κ(W) = σ_max/σ_min
(PRUNE's bound) from a float64 SVD.

ΔW is the difference of the stored weights, not the sum of the editors' factors: for a bf16 model
the factors are not what the model carries. σ_max comes from a block subspace iteration (a few
products with W, no SVD) to `tol`, started from W₀'s top right singular vectors for W and from a
seeded random block for ΔW — never from an earlier measurement, so a value depends only on the
weights it measures and a resumed run records the same bits as one never stopped (starting from
the previous measurement took 1.5× fewer iterations on a real MEMIT run, but made every value
depend on the run's history). Thresholds raise alarms (logged, in
the ledger) and, with `stop_on_alarm`, ask the session to stop the run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from .base import AFTER_ALL, AFTER_EACH, EvalContext, EvalResult, Metric, configure

log = logging.getLogger("seqedit.metrics")


@dataclass(frozen=True)
class HealthConfig:
    """block: vectors in the subspace iteration (more converges faster when σ₁ ≈ σ₂); tol:
    relative residual ‖Wᵀu − σv‖/σ at which σ_max is accepted; max_iter: iterations per call.
    alarm_*: thresholds (None disables) on σ_max(ΔW)/σ_max(W₀), mean|W|/mean|W₀| − 1 and
    κ(W)/κ(W₀); stop_on_alarm: the session stops the run (after recording) on an alarm."""

    after_each: bool = True
    block: int = 4
    tol: float = 1e-5
    max_iter: int = 200
    condition: bool = True
    alarm_sigma_ratio: float | None = 1.0
    alarm_l1_growth: float | None = 0.5
    alarm_condition_ratio: float | None = 10.0
    stop_on_alarm: bool = False

    def __post_init__(self) -> None:
        for name in ("block", "max_iter"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"health: {name} must be a positive int, got {value!r}")
        if not (isinstance(self.tol, (int, float)) and 0 < self.tol < 1):
            raise ValueError(f"health: tol must be in (0, 1), got {self.tol!r}")
        for name in ("alarm_sigma_ratio", "alarm_l1_growth", "alarm_condition_ratio"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0
                                          and value != float("inf")):
                raise ValueError(f"health: {name} must be a positive finite number or None, "
                                 f"got {value!r}")


def top_singular_from(a: torch.Tensor, start: torch.Tensor, *, tol: float,
                      max_iter: int) -> tuple[float, torch.Tensor, int]:
    """(σ_max(a), the right block reached, iterations) by block subspace iteration on aᵀa with
    Rayleigh–Ritz, from the right block `start` [n, b]."""
    v = torch.linalg.qr(start)[0]
    sigma = 0.0
    for it in range(1, max_iter + 1):
        av = a @ v  # [m, b]
        u_small, s, vh = torch.linalg.svd(av, full_matrices=False)
        sigma = float(s[0])
        if sigma == 0.0:
            return 0.0, v, it
        residual = float(torch.linalg.vector_norm(a.T @ u_small[:, 0] - sigma * (v @ vh[0]))) / sigma
        if residual <= tol:
            return sigma, v @ vh.T, it
        v = torch.linalg.qr(a.T @ av)[0]
    return sigma, v, max_iter


class HealthEvaluator:
    name = "health"

    def __init__(self, **options: Any) -> None:
        self.config = configure(HealthConfig, options, self.name)
        self._base: dict[str, dict[str, float]] = {}
        # Fixed at prepare: (weight, "w" | "delta") → the block the iteration starts from.
        self._start: dict[tuple[str, str], torch.Tensor] = {}

    def prepare(self, model: torch.nn.Module, ctx: EvalContext) -> None:
        for name in ctx.weights:
            w0 = self._matrix(ctx.require_base_weight(name))
            _, s, vh = torch.linalg.svd(w0.double(), full_matrices=False)
            block = min(self.config.block, *w0.shape)
            # W₀'s own top singular vectors: an edited W's are near them.
            self._start[(name, "w")] = vh[:block].T.to(w0.dtype).contiguous()
            gen = torch.Generator(device="cpu").manual_seed(0)
            self._start[(name, "delta")] = torch.randn(w0.shape[1], block, generator=gen,
                                                       dtype=torch.float64).to(w0.dtype)
            self._base[name] = {
                "sigma_max": float(s[0]), "sigma_min": float(s[-1]),
                "condition": float(s[0] / s[-1]) if float(s[-1]) > 0 else float("inf"),
                "mean_abs": float(w0.abs().mean()), "fro": float(torch.linalg.norm(w0.double())),
            }

    def after_edit(self, model: torch.nn.Module, ctx: EvalContext, requests: list) -> EvalResult | None:
        return self._measure(model, ctx, AFTER_EACH) if self.config.after_each else None

    def evaluate(self, model: torch.nn.Module, ctx: EvalContext) -> EvalResult:
        return self._measure(model, ctx, AFTER_ALL)

    @staticmethod
    def _matrix(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(torch.promote_types(t.dtype, torch.float32))

    def _sigma(self, key: tuple[str, str], a: torch.Tensor) -> tuple[float, int]:
        start = self._start[key].to(a.device, a.dtype)
        sigma, _, iters = top_singular_from(a, start, tol=self.config.tol,
                                            max_iter=self.config.max_iter)
        return sigma, iters

    def _measure(self, model, ctx: EvalContext, schedule: str) -> EvalResult:
        start = time.perf_counter()
        cfg = self.config
        metrics, alarms, iterations = [], [], {}
        for name in ctx.weights:
            base = self._base.get(name)
            if base is None:
                raise RuntimeError(f"health: {name} was not prepared; call prepare() on the "
                                   "unedited model first")
            w = self._matrix(model.get_parameter(name))
            delta = w - self._matrix(ctx.require_base_weight(name)).to(w.device)
            with torch.no_grad():
                sigma_w, it_w = self._sigma((name, "w"), w)
                sigma_d, it_d = self._sigma((name, "delta"), delta)
            iterations[name] = [it_w, it_d]
            mean_abs = float(w.abs().mean())
            fro = float(torch.linalg.norm(delta.double()))
            proto = {"family": "health", "schedule": schedule, "weight": name}
            iterated = {**proto, "method": f"subspace iteration, fixed start, tol {cfg.tol:g}"}
            values = {
                "sigma_max": (sigma_w, iterated),
                "sigma_max_delta_ratio": (sigma_d / base["sigma_max"], iterated),
                "mean_abs": (mean_abs, proto),
                "l1_ratio": (mean_abs / base["mean_abs"], proto),
                "delta_fro": (fro, proto),
                "delta_fro_ratio": (fro / base["fro"], proto),
            }
            if schedule == AFTER_ALL and cfg.condition:
                s = torch.linalg.svdvals(w.double())
                kappa = float(s[0] / s[-1]) if float(s[-1]) > 0 else float("inf")
                exact = {**proto, "method": "float64 SVD"}
                values["condition"] = (kappa, exact)
                values["condition_ratio"] = (kappa / base["condition"], exact)
            for metric, (value, protocol) in values.items():
                metrics.append(Metric(metric, value, protocol))
            alarms += self._alarms(name, values)
        for alarm in alarms:
            log.warning("weight health alarm at step %d: %s", ctx.step, alarm)
        info = {"alarms": alarms, "iterations": iterations,
                "base": {n: self._base[n] for n in ctx.weights}}
        if alarms and cfg.stop_on_alarm:
            info["stop"] = True
        return EvalResult(self.name, metrics, step=ctx.step, live_edits=ctx.live_edits,
                          schedule=schedule, seconds=time.perf_counter() - start, info=info)

    def _alarms(self, name: str, values: dict[str, tuple[float, dict]]) -> list[str]:
        cfg, out = self.config, []
        checks = (("sigma_max_delta_ratio", cfg.alarm_sigma_ratio, "σ_max(ΔW)/σ_max(W0)"),
                  ("l1_ratio", None if cfg.alarm_l1_growth is None else 1 + cfg.alarm_l1_growth,
                   "mean|W|/mean|W0|"),
                  ("condition_ratio", cfg.alarm_condition_ratio, "κ(W)/κ(W0)"))
        for key, limit, text in checks:
            if limit is not None and key in values and values[key][0] >= limit:
                out.append(f"{name}: {text} = {values[key][0]:.4g} ≥ {limit:g}")
        return out
