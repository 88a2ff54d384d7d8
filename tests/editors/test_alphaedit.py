"""AlphaEdit: null-space identity, closed form, the state its commits keep and replay. The
Editor contract (purity, shapes, commit then revert) is checked for every editor in
test_editor_battery.py."""
from __future__ import annotations

import pytest
import torch
from editor_helpers import FAST, Tiny

from seqedit import editors
from seqedit.editors.alphaedit import nullspace_projector


@pytest.fixture()
def lowrank_c(llama):
    """C with a decaying spectrum, so a relative threshold leaves a real null space."""
    out = {}
    for layer, c in llama.c.items():
        evals, evecs = torch.linalg.eigh(c)
        scale = torch.logspace(-6, 0, evals.numel(), dtype=torch.float64)
        out[layer] = (evecs * scale) @ evecs.T
    return out


def _editor(llama, **kw):
    return editors.create("alphaedit", llama.spec, nullspace_threshold=1e-3, **FAST, **kw)


def test_projector_is_a_projector(lowrank_c):
    p = nullspace_projector(lowrank_c[0], 1e-3)
    assert torch.allclose(p @ p, p, atol=1e-10) and torch.allclose(p, p.T)
    rank = int(round(float(torch.trace(p))))
    assert 0 < rank < p.shape[0]


def test_update_leaves_preserved_subspace_alone(llama, requests_, lowrank_c):
    ed = _editor(llama)
    ctx = llama.ctx(c=lowrank_c)
    delta = ed.compute(llama.model, requests_[:2], ctx)
    for layer, ld in zip(sorted(ed.config.layers), delta.layers):
        p = ed.projector(layer, ctx)
        dw = ld.dense().double()
        keep = torch.eye(p.shape[0], dtype=torch.float64) - p
        assert float((dw @ keep).abs().max()) <= 1e-5 * float(dw.abs().max())
        assert ld.u.shape[1] == ld.v.shape[1] == 2


def test_closed_form_counts_the_committed_keys(llama, requests_, lowrank_c):
    ed = _editor(llama)
    ctx = llama.ctx(c=lowrank_c)
    first = ed.compute(llama.model, requests_[:1], ctx)
    assert ed.state() == {}
    ed.commit(first)
    after_first = ed.state()
    second = ed.compute(llama.model, requests_[1:3], ctx)
    alpha = ed.config.l2_weight
    for layer, ld in zip(sorted(ed.config.layers), second.layers):
        p = ed.projector(layer, ctx)
        k = second.keys[ld.name].double()
        kp = first.keys[ld.name].double()
        s = k @ k.T + kp @ kp.T
        lhs = ld.dense().double() @ (s @ p + alpha * torch.eye(p.shape[0], dtype=torch.float64))
        rhs = ld.u.double() @ k.T @ p
        assert torch.allclose(lhs, rhs, atol=1e-4 * float(rhs.abs().max()) + 1e-9)
        assert torch.allclose(after_first[ld.name], kp @ kp.T)


def test_replaying_commits_rebuilds_state(llama, requests_, lowrank_c):
    ed = _editor(llama)
    ctx = llama.ctx(c=lowrank_c)
    deltas = [ed.compute(llama.model, [r], ctx) for r in requests_[:2]]
    for d in deltas:
        ed.commit(d)
    fresh = _editor(llama)
    for d in deltas:
        fresh.commit(type(d).from_tensors(d.method, d.to_tensors(), {ld.name: ld.transposed for ld in d.layers}))
    for name, g in ed.state().items():
        assert torch.allclose(fresh.state()[name], g)


def test_mlp_out_targets_keep_the_null_space_property(requests_):
    """On a block that normalises its MLP output (tiny Gemma-3) AlphaEdit picks per-layer targets
    and its update still leaves the preserved subspace alone."""
    t = Tiny("gemma3")
    low = {}
    for layer, c in t.c.items():
        evals, evecs = torch.linalg.eigh(c)
        low[layer] = (evecs * torch.logspace(-6, 0, evals.numel(), dtype=torch.float64)) @ evecs.T
    ed = _editor(t)
    ctx = t.ctx(c=low)
    delta = ed.compute(t.model, requests_[:2], ctx)
    assert delta.info["targets"] == "mlp_out" and delta.is_finite()
    for layer, ld in zip(sorted(ed.config.layers), delta.layers):
        p = ed.projector(layer, ctx)
        dw = ld.dense().double()
        keep = torch.eye(p.shape[0], dtype=torch.float64) - p
        assert float((dw @ keep).abs().max()) <= 1e-5 * float(dw.abs().max())
