"""MEMIT: normal equations per layer, residual spreading, batches, targets. The Editor contract
(purity, shapes, orientation) is checked for every editor in test_editor_battery.py."""
from __future__ import annotations

import copy

import pytest
import torch
from editor_helpers import FAST, Tiny, apply_delta

from seqedit import editors
from seqedit.editors import _text, keys, values


def test_normal_equations(any_tiny, requests_):
    """Δ (λC + KKᵀ) = R Kᵀ with R = u, K = the keys the delta reports, one column per request."""
    t = any_tiny
    ed = editors.create("memit", t.spec, **FAST)
    delta = ed.compute(t.model, requests_[:2], t.ctx())
    lam = ed.config.mom2_update_weight
    for layer, ld in zip(sorted(ed.config.layers), delta.layers):
        assert ld.rank == 2 and delta.keys[ld.name].shape == (t.spec.mlp_hidden_size, 2)
        k = delta.keys[ld.name].double()
        a = lam * t.c[layer] + k @ k.T
        lhs = ld.dense().double() @ a
        rhs = ld.u.double() @ k.T
        assert torch.allclose(lhs, rhs, rtol=1e-4, atol=1e-4 * float(rhs.abs().max()))


def _memit_with_target(t, requests):
    """(editor, delta, z layer, templates, target-value result) of one MEMIT compute on `t`."""
    ed = editors.create("memit", t.spec, **FAST)
    ctx = t.ctx()
    delta = ed.compute(t.model, requests, ctx)
    z_layer = sorted(ed.config.layers)[-1]
    templates = keys.context_templates(t.model, t.tokenizer, ctx)
    res = values.target_values(t.model, t.spec, t.tokenizer, requests, templates, layer=z_layer,
                               site="block", cfg=ed.config)
    return ed, delta, z_layer, templates, res


def test_residual_is_spread_over_remaining_layers(llama, requests_):
    """The last layer receives the whole remaining residual: u_last = Z − H_last."""
    ed, delta, z_layer, templates, res = _memit_with_target(llama, requests_[:1])
    z = res.v_star
    # First layer: the residual on the unedited model divided by |L|.
    h0 = keys.compute_keys(llama.model, llama.spec, llama.tokenizer, requests_[:1], templates, [z_layer],
                           blocks=[z_layer])[("bare_block", z_layer)]
    n = len(ed.config.layers)
    assert torch.allclose(delta.layers[0].u[:, 0], (z - h0)[0] / n, atol=1e-4)


def test_keys_seen_on_partially_updated_model(llama, requests_):
    """Keys of layer i come from the model with layers < i already updated (not the original)."""
    ed = editors.create("memit", llama.spec, **FAST)
    ctx = llama.ctx()
    delta = ed.compute(llama.model, requests_[:1], ctx)
    layers = sorted(ed.config.layers)
    templates = keys.context_templates(llama.model, llama.tokenizer, ctx)
    saved = {n: p.detach().clone() for n, p in llama.model.named_parameters()}
    try:
        apply_delta(llama.model, type(delta)(delta.method, delta.layers[:1]))
        k1 = keys.compute_keys(llama.model, llama.spec, llama.tokenizer, requests_[:1], templates, [layers[1]])
        assert torch.allclose(k1[layers[1]][0], delta.keys[delta.layers[1].name][:, 0], atol=1e-5)
    finally:
        with torch.no_grad():
            for n, p in llama.model.named_parameters():
                p.copy_(saved[n])


def test_not_positive_definite_is_a_clear_error(llama, requests_):
    ed = editors.create("memit", llama.spec, **FAST)
    neg = {layer: -c for layer, c in llama.c.items()}
    with pytest.raises(editors.SolveError, match="positive semi-definite") as err:
        ed.compute(llama.model, requests_[:1], llama.ctx(c=neg))
    assert f"layer {sorted(ed.config.layers)[0]}" in err.value.reason


@pytest.mark.parametrize("b", [1, 3])
def test_solve_reuses_one_factor_per_layer_and_matches_a_fresh_factorisation(llama, b):
    from seqedit.editors.memit import cholesky_solve, memit_solve

    ctx, lam, layer = llama.ctx(), 37.5, 1
    c = llama.c[layer]
    gen = torch.Generator().manual_seed(b)
    for _ in range(2):
        k = torch.randn(c.shape[0], b, generator=gen, dtype=torch.float64)
        direct = cholesky_solve(lam * c + k @ k.T, k, "test")
        got = memit_solve(ctx, layer, lam, k)
        assert float((got - direct).norm() / direct.norm()) < 1e-9
    (entry,) = [v for key, v in ctx.memo.items() if key[0] == "memit_factor"]
    assert entry[0] is c and entry[2].chol is not None
    other = 2.0 * c  # a provider handing out another C gets a new factor, not the stale one
    k = torch.randn(c.shape[0], b, generator=gen, dtype=torch.float64)
    ctx.second_moment = lambda _: other
    direct = cholesky_solve(lam * other + k @ k.T, k, "test")
    assert float((memit_solve(ctx, layer, lam, k) - direct).norm() / direct.norm()) < 1e-9


def test_solve_without_a_factor_of_lambda_c_takes_the_direct_path(llama):
    from seqedit.editors.memit import memit_solve

    d = llama.c[0].shape[0]
    k = torch.randn(d, d + 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rank_one = {0: torch.ones(d, d, dtype=torch.float64)}  # λC singular, λC + KKᵀ not
    for lam, c in ((0.0, llama.c), (3.0, rank_one)):
        ctx = llama.ctx(c=c)
        got = memit_solve(ctx, 0, lam, k)
        torch.testing.assert_close(got, torch.linalg.solve(lam * c[0] + k @ k.T, k), rtol=1e-7, atol=1e-9)


def test_target_gap_reports_how_close_the_written_update_gets(llama, requests_):
    """info["target_gap"] = ‖z − H‖/‖z − H₀‖ on the bare prompt once the weights hold the update."""
    _, delta, z_layer, templates, res = _memit_with_target(llama, requests_[:2])
    edited = copy.deepcopy(llama.model)
    apply_delta(edited, delta)
    h = keys.compute_keys(edited, llama.spec, llama.tokenizer, requests_[:2], templates, [z_layer],
                          blocks=[z_layer])[("bare_block", z_layer)]
    expect = (res.v_star - h).norm(dim=1) / res.delta.norm(dim=1)
    assert delta.info["target_gap"] == pytest.approx(expect.tolist(), rel=1e-3, abs=1e-4)
    assert all(0 <= g < 1 for g in delta.info["target_gap"])  # the update moved towards z


def test_target_gap_is_zero_when_nothing_had_to_be_written(llama, requests_):
    """A target met before any step (δ = 0) gives gap 0, not 0/0."""
    ed = editors.create("memit", llama.spec, **{**FAST, "early_stop_loss": 1e9})
    delta = ed.compute(llama.model, requests_[:2], llama.ctx())
    assert delta.info["steps"] == [0, 0]
    assert delta.info["target_gap"] == [0.0, 0.0]


@pytest.fixture(scope="module")
def gemma3():
    return Tiny("gemma3")


def test_auto_targets_follow_the_block_structure(llama, gemma3, requests_):
    for t, expect in ((llama, "block"), (gemma3, "mlp_out")):
        ed = editors.create("memit", t.spec, **FAST)
        assert ed.config.targets == "auto"
        assert ed.compute(t.model, requests_[:1], t.ctx()).info["targets"] == expect


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_mlp_out_targets_write_each_layer_its_own_residual(arch, requests_, request):
    """targets="mlp_out": R_i = T_i − M_i (no spreading) with M_i read on the partially updated
    model; the normal equations hold; target_gap = ‖T − M‖/‖δ‖ over all layers, measured here on
    the model with the update in its weights."""
    t = request.getfixturevalue(arch)
    ed = editors.create("memit", t.spec, targets="mlp_out", **FAST)
    ctx = t.ctx()
    reqs = requests_[:2]
    delta = ed.compute(t.model, reqs, ctx)
    assert delta.info["targets"] == "mlp_out"
    layers = sorted(ed.config.layers)
    templates = keys.context_templates(t.model, t.tokenizer, ctx)
    res = values.target_values(t.model, t.spec, t.tokenizer, reqs, templates, layer=tuple(layers),
                               site="mlp_out", cfg=ed.config)
    lam = ed.config.mom2_update_weight
    edited = copy.deepcopy(t.model)
    for i, (layer, ld) in enumerate(zip(layers, delta.layers)):
        m = keys.compute_keys(edited, t.spec, t.tokenizer, reqs, templates, [], mlp_outs=[layer])
        assert torch.allclose(ld.u.T, res.v_star[:, i] - m[("bare_mlp_out", layer)], atol=1e-4)
        k = delta.keys[ld.name].double()
        lhs = ld.dense().double() @ (lam * t.c[layer] + k @ k.T)
        assert torch.allclose(lhs, ld.u.double() @ k.T, rtol=1e-4, atol=1e-4 * float(lhs.abs().max()))
        apply_delta(edited, type(delta)(delta.method, [ld]))
    m = keys.compute_keys(edited, t.spec, t.tokenizer, reqs, templates, [], mlp_outs=layers)
    now = torch.stack([m[("bare_mlp_out", x)] for x in layers], 1)
    expect = (res.v_star - now).flatten(1).norm(dim=1) / res.delta.flatten(1).norm(dim=1)
    assert delta.info["target_gap"] == pytest.approx(expect.tolist(), rel=1e-3, abs=1e-4)
    assert all(0 <= g < 1 for g in delta.info["target_gap"])


def test_bad_targets_is_rejected(llama):
    with pytest.raises(ValueError, match="targets must be one of"):
        editors.create("memit", llama.spec, targets="residual")


@pytest.fixture(scope="module")
def gemma3_real_eps():
    """Tiny Gemma-3 in the regime of the real one, where RMSNorm's ε (1e-6) is negligible: the
    tiny model's MLP outputs have RMS ≈ 0.003 (mean square ≈ 9ε), Gemma-3-270M's ≈ 0.1–20."""
    t = Tiny("gemma3")
    for module in t.model.modules():
        if isinstance(getattr(module, "eps", None), float):
            module.eps = 1e-12
    return t


def test_a_block_that_normalises_its_mlp_output_ignores_its_scale(gemma3_real_eps):
    """What keep_target_norm relies on: on Gemma-3 blocks, c·(MLP output) for any c > 0 gives
    the same block output (to float32 rounding)."""
    t = gemma3_real_eps
    layer = t.spec.default_edit_layers()[0]
    batch = _text.pad(_text.encode_rows(t.tokenizer, [_text.fill("{}", "{} quick brown fox", "The")]),
                      _text.pad_id(t.tokenizer), "cpu")

    def block_out(c):
        hook = t.spec.mlp_out(t.model, layer).register_forward_hook(lambda m, a, out: out * c)
        try:
            return keys.read(t.model, t.spec, batch, blocks=(layer,))[("block", layer)]
        finally:
            hook.remove()

    plain = block_out(1.0)
    for c in (0.3, 3.7):
        assert torch.allclose(block_out(c), plain, rtol=1e-4, atol=1e-5 * float(plain.abs().max()))


def test_keep_target_norm_rescales_each_target_to_the_output_it_replaces(gemma3_real_eps, requests_):
    """Each layer's target keeps the direction of MEMIT's T and takes ‖v₀‖: the lowest layer
    writes exactly T·‖v₀‖/‖T‖ − v₀ (at most 2‖v₀‖, where plain MEMIT writes δ, here several
    ‖v₀‖); the edit still moves toward its targets and ‖ΔW‖_F shrinks."""
    t, reqs = gemma3_real_eps, requests_[:2]
    ctx = t.ctx()
    layers = sorted(t.spec.default_edit_layers())
    big = dict(FAST, clamp_norm_factor=8.0, v_lr=2.0)  # δ well beyond ‖v₀‖, as on Gemma-3-270M
    plain = editors.create("memit", t.spec, **big).compute(t.model, reqs, ctx)
    ed = editors.create("memit", t.spec, keep_target_norm=True, **big)
    kept = ed.compute(t.model, reqs, ctx)
    assert kept.info["targets"] == "mlp_out" and kept.is_finite()
    templates = keys.context_templates(t.model, t.tokenizer, ctx)
    res = values.target_values(t.model, t.spec, t.tokenizer, reqs, templates, layer=tuple(layers),
                               site="mlp_out", cfg=ed.config)
    v, v0 = res.v_star.double(), res.v_init.double()  # [b, |L|, d]
    assert (res.delta.norm(dim=-1) > 2 * res.v_init.norm(dim=-1)).any()
    assert torch.allclose(torch.tensor(kept.info["kept_norm_before"]), v.norm(dim=-1).float(), rtol=1e-5)
    scaled = v * (v0.norm(dim=-1, keepdim=True) / v.norm(dim=-1, keepdim=True))
    lowest = kept.layers[0].u.double().T  # [b, d]
    expect = scaled[:, 0] - v0[:, 0]
    assert torch.allclose(lowest, expect, atol=1e-4 * float(expect.abs().max()))
    assert (lowest.norm(dim=1) <= 2 * v0[:, 0].norm(dim=1) * (1 + 1e-5)).all()
    assert all(0 <= g < 1 for g in kept.info["target_gap"])
    fro = [sum(float(ld.dense().double().norm()) ** 2 for ld in d.layers) for d in (kept, plain)]
    assert fro[0] < fro[1]


def test_keep_target_norm_is_refused_where_it_would_change_the_edit(llama, requests_, monkeypatch):
    with pytest.raises(ValueError, match="keep_target_norm needs 'mlp_out'"):
        editors.create("memit", llama.spec, targets="block", keep_target_norm=True)
    with pytest.raises(ValueError, match="choose one"):
        editors.create("alphaedit", llama.spec, keep_target_norm=True, nas_anchor=(1.0,))
    auto = editors.create("memit", llama.spec, keep_target_norm=True, **FAST)

    def optimised(*args, **kwargs):
        raise AssertionError("the value optimisation ran before the refusal")

    monkeypatch.setattr(values, "target_values", optimised)
    with pytest.raises(ValueError, match="add the MLP output to the residual"):
        auto.compute(llama.model, requests_[:1], llama.ctx())
