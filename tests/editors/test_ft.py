"""FT-L: bounded dense change, exact factors, purity."""
from __future__ import annotations

import torch
from editor_helpers import weights_digest

from seqedit import editors
from seqedit.editors.ft import exact_factors


def test_bounded_factored_and_pure(any_tiny, requests_):
    t = any_tiny
    ed = editors.create("ft", t.spec, num_steps=4, norm_constraint=1e-3, lr=1e-2)
    before = weights_digest(t.model)
    delta = ed.compute(t.model, requests_[:2], t.ctx())
    assert weights_digest(t.model) == before
    (ld,) = delta.layers
    dw = ld.dense()
    assert dw.shape == (t.spec.hidden_size, t.spec.mlp_hidden_size)
    assert float(dw.abs().max()) <= 1e-3 * (1 + 1e-4)
    assert ld.rank <= min(dw.shape)
    assert ld.transposed == t.spec.mlp_out_transposed
    assert delta.info["loss_last"] <= delta.info["loss_first"]


def test_exact_factors_reconstruct_low_rank():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 3, generator=g) @ torch.randn(3, 30, generator=g)
    u, v = exact_factors(a)
    assert u.shape[1] == 3 and torch.allclose(u @ v.T, a, atol=1e-5)
