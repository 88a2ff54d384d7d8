"""ROME: the rank-one identity (W + ΔW) k_p = v*, the key direction, its limits. The Editor
contract (purity, shapes, orientation) is checked for every editor in test_editor_battery.py."""
from __future__ import annotations

import pytest
import torch
from editor_helpers import FAST, apply_delta

from seqedit import editors
from seqedit.editors import keys


def _key_and_output(t, req, layer, templates):
    found = keys.compute_keys(t.model, t.spec, t.tokenizer, [req], templates, [layer])
    return found[layer][0], found[("bare_key", layer)][0]


@pytest.mark.parametrize("fixed_key", [False, True])
def test_edited_layer_maps_key_to_target(any_tiny, requests_, fixed_key):
    t = any_tiny
    ed = editors.create("rome", t.spec, fixed_key=fixed_key, **FAST)
    ctx = t.ctx()
    req = requests_[0]
    delta = ed.compute(t.model, [req], ctx)
    assert [ld.rank for ld in delta.layers] == [1]
    layer = ed.config.layer
    templates = keys.context_templates(t.model, t.tokenizer, ctx)
    k_bar, k_p = _key_and_output(t, req, layer, templates)
    key = k_bar if fixed_key else k_p
    from seqedit.editors import values
    res = values.target_values(t.model, t.spec, t.tokenizer, [req], templates, layer=layer, site="mlp_out",
                               cfg=ed.config)
    saved = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    try:
        apply_delta(t.model, delta)
        with torch.no_grad():
            out = t.spec.mlp_out(t.model, layer)(key[None])[0]
        assert torch.allclose(out, res.v_star[0], atol=1e-4, rtol=1e-4)
    finally:
        with torch.no_grad():
            for n, p in t.model.named_parameters():
                p.copy_(saved[n])


def test_mom2_adjustment_direction(llama, requests_):
    """u ∝ C⁻¹k̄ with the adjustment, ∝ k̄ without it."""
    ctx = llama.ctx()
    for adjust in (True, False):
        ed = editors.create("rome", llama.spec, mom2_adjustment=adjust, v_num_grad_steps=1)
        (ld,) = ed.compute(llama.model, requests_[:1], ctx).layers
        templates = keys.context_templates(llama.model, llama.tokenizer, ctx)
        k_bar, _ = _key_and_output(llama, requests_[0], ed.config.layer, templates)
        want = torch.linalg.solve(llama.c[ed.config.layer], k_bar.double()) if adjust else k_bar.double()
        want = (want / want.norm()).float()
        assert torch.allclose(ld.v[:, 0], want, atol=1e-5)


def test_one_request_only(llama, requests_):
    ed = editors.create("rome", llama.spec, **FAST)
    with pytest.raises(ValueError, match="one request"):
        ed.compute(llama.model, requests_[:2], llama.ctx())


def test_needs_statistics_only_with_adjustment(llama, requests_):
    from seqedit.editors import EditContext

    bare = EditContext(llama.tokenizer, llama.spec)
    with pytest.raises(ValueError, match="second_moment"):
        editors.create("rome", llama.spec, **FAST).compute(llama.model, requests_[:1], bare)
    delta = editors.create("rome", llama.spec, mom2_adjustment=False, **FAST).compute(llama.model, requests_[:1], bare)
    assert delta.is_finite()


def test_c_solve_factors_c_once_per_session(llama):
    from seqedit.editors.rome import _c_solve

    c = llama.c[1].clone()
    ctx = llama.ctx(c={1: c})
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(c.shape[0], generator=gen, dtype=torch.float64)
    direct = torch.linalg.solve(c, k)
    assert float((_c_solve(ctx, 1, k) - direct).norm() / direct.norm()) < 1e-10
    (key,) = [key for key in ctx.memo if key[0] == "rome_cholesky"]
    factor = ctx.memo[key][2]
    _c_solve(ctx, 1, torch.randn(c.shape[0], generator=gen, dtype=torch.float64))
    assert ctx.memo[key][2] is factor
    c.mul_(3.0)  # changed in place: the stale factor must not be used
    direct = torch.linalg.solve(c, k)
    assert float((_c_solve(ctx, 1, k) - direct).norm() / direct.norm()) < 1e-10
    assert ctx.memo[key][2] is not factor
    ctx_nan = llama.ctx(c={1: torch.full_like(c, float("nan"))})
    with pytest.raises(editors.SolveError, match="layer 1"):
        _c_solve(ctx_nan, 1, k)
