"""Weight health against float64 SVDs of the explicit matrices, on fresh random inputs."""
from __future__ import annotations

import pytest
import torch
from seqedit import metrics
from seqedit.metrics.base import EvalContext
from seqedit.metrics.health import top_singular_from
from seqedit.models import spec as model_spec


def setup(model, **options):
    spec = model_spec(model)
    names = tuple(spec.mlp_out_weight_name(i) for i in (0, 2))
    base = {n: model.get_parameter(n).detach().clone() for n in names}
    ctx = EvalContext(tokenizer=None, spec=spec, weights=names, base_weight=base.__getitem__)
    ev = metrics.create("health", **options)
    ev.prepare(model, ctx)
    return ev, ctx, names, base


def plant(model, names, scale, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in names:
            p = model.get_parameter(n)
            u = torch.randn(p.shape[0], 2, generator=gen, dtype=torch.float64)
            v = torch.randn(p.shape[1], 2, generator=gen, dtype=torch.float64)
            p += (scale * u @ v.T).to(p.dtype)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_health_equals_a_float64_svd_of_the_explicit_weights(arch):
    from seqedit.models import tiny

    model, _ = tiny(arch, seed=3)
    ev, ctx, names, base = setup(model)
    plant(model, names, 0.2)
    before = {n: model.get_parameter(n).detach().clone() for n in names}
    result = ev.evaluate(model, ctx)
    for n in names:
        w = model.get_parameter(n).detach().double()
        w0 = base[n].double()
        s, s0, sd = (torch.linalg.svdvals(x) for x in (w, w0, w - w0))
        close = {"rel": 1e-4}
        assert result.value("sigma_max", weight=n) == pytest.approx(float(s[0]), **close)
        assert result.value("sigma_max_delta_ratio", weight=n) == pytest.approx(
            float(sd[0] / s0[0]), **close)
        assert result.value("condition", weight=n) == pytest.approx(float(s[0] / s[-1]), rel=1e-9)
        assert result.value("condition_ratio", weight=n) == pytest.approx(
            float(s[0] / s[-1] * s0[-1] / s0[0]), rel=1e-9)
        assert result.value("mean_abs", weight=n) == pytest.approx(float(w.abs().mean()), rel=1e-6)
        assert result.value("l1_ratio", weight=n) == pytest.approx(
            float(w.abs().mean() / w0.abs().mean()), rel=1e-6)
        # ‖ΔW‖_F of the sum, not √Σ‖ΔWᵢ‖² over edits.
        assert result.value("delta_fro", weight=n) == pytest.approx(
            float(torch.linalg.norm(w - w0)), rel=1e-6)
        assert torch.equal(model.get_parameter(n), before[n])
    assert result.get("sigma_max", weight=names[0]).protocol["family"] == "health"


def test_unedited_model_has_zero_delta_and_unit_ratios(llama):
    model, _ = llama
    ev, ctx, names, _ = setup(model)
    result = ev.after_edit(model, ctx, [])
    for n in names:
        assert result.value("sigma_max_delta_ratio", weight=n) == 0.0
        assert result.value("delta_fro", weight=n) == 0.0
        assert result.value("l1_ratio", weight=n) == 1.0
    assert result.info["alarms"] == []
    assert result.schedule == "after-each"
    assert not any(m.name == "condition" for m in result.metrics)  # exact κ only after-all


def test_a_start_near_the_answer_needs_fewer_iterations_and_both_converge():
    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(300, 300, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64))[0]
    spectrum = torch.cat([torch.ones(1, dtype=torch.float64),
                          torch.linspace(0.9, 0.1, 199, dtype=torch.float64)])
    a = u[:, :200] @ torch.diag(spectrum) @ v.T
    b = a + 1e-4 * torch.randn(300, 1, generator=gen, dtype=torch.float64) @ torch.randn(
        1, 200, generator=gen, dtype=torch.float64)
    cold = torch.randn(200, 4, generator=gen, dtype=torch.float64)
    sigma_cold, _, iters_cold = top_singular_from(b, cold, tol=1e-6, max_iter=2000)
    sigma_near, _, iters_near = top_singular_from(b, v[:, :4], tol=1e-6, max_iter=2000)  # a's
    want = float(torch.linalg.svdvals(b)[0])
    assert sigma_cold == pytest.approx(want, rel=1e-9)
    assert sigma_near == pytest.approx(want, rel=1e-9)
    assert iters_near <= iters_cold / 2


def test_a_value_depends_only_on_the_weights_it_measures(llama):
    """A resumed run prepares a fresh evaluator: its measurement of the same weights must be the
    same bits as that of an evaluator that has measured every step before."""
    model, _ = llama
    ev, ctx, names, _ = setup(model)
    for seed in (1, 2, 3):
        plant(model, names, 0.05, seed=seed)
        seen = ev.after_edit(model, ctx, [])
    fresh = metrics.create("health")
    fresh.prepare(model, ctx)  # from the same base weights (ctx's), with no history
    again = fresh.after_edit(model, ctx, [])
    assert [(m.name, m.value, m.protocol) for m in again.metrics] == [
        (m.name, m.value, m.protocol) for m in seen.metrics]


def test_alarm_fires_when_the_accumulated_change_outgrows_the_base_and_can_stop(llama):
    model, _ = llama
    ev, ctx, names, _ = setup(model, alarm_sigma_ratio=0.5, stop_on_alarm=True)
    plant(model, names, 1e-4)
    quiet = ev.evaluate(model, ctx)
    assert quiet.info["alarms"] == [] and "stop" not in quiet.info
    plant(model, names, 5.0, seed=2)
    loud = ev.evaluate(model, ctx)
    assert any("σ_max(ΔW)/σ_max(W0)" in a for a in loud.info["alarms"])
    assert loud.info["stop"] is True


@pytest.mark.parametrize("bad", [{"block": 0}, {"tol": 0}, {"alarm_l1_growth": -1},
                                 {"alarm_sigma_ratio": float("inf")}, {"size": 3}])
def test_bad_options_name_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        metrics.create("health", **bad)


def test_needs_prepare_and_base_weights(llama):
    model, _ = llama
    spec = model_spec(model)
    ctx = EvalContext(tokenizer=None, spec=spec, weights=(spec.mlp_out_weight_name(0),))
    with pytest.raises(ValueError, match="base weights"):
        metrics.create("health").prepare(model, ctx)
