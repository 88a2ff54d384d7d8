"""FT-L: bounded dense change, exact factors. The Editor contract (purity, shapes, orientation)
is checked for every editor in test_editor_battery.py."""
from __future__ import annotations

import torch

from seqedit import editors
from seqedit.editors.ft import exact_factors


def test_bounded_and_factored(any_tiny, requests_):
    t = any_tiny
    ed = editors.create("ft", t.spec, num_steps=4, norm_constraint=1e-3, lr=1e-2)
    delta = ed.compute(t.model, requests_[:2], t.ctx())
    (ld,) = delta.layers
    dw = ld.dense()
    assert float(dw.abs().max()) <= 1e-3 * (1 + 1e-4)
    assert ld.rank <= min(dw.shape)
    assert delta.info["loss_last"] <= delta.info["loss_first"]


def test_exact_factors_reconstruct_low_rank():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 3, generator=g) @ torch.randn(3, 30, generator=g)
    u, v = exact_factors(a)
    assert u.shape[1] == 3 and torch.allclose(u @ v.T, a, atol=1e-5)
