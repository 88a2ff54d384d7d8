"""AccumulatedDelta: the session's factored ΔW equals the dense sum, compacts exactly, and its
singular triplets are exact."""
from __future__ import annotations

import torch

from seqedit.editors.accumulated import AccumulatedDelta
from seqedit.editors.base import Delta, LayerDelta


def _delta(gen, name, m, n, k, transposed=False):
    u = torch.randn(m, k, generator=gen)
    v = torch.randn(n, k, generator=gen)
    return Delta("test", [LayerDelta(name, u, v, transposed)])


def test_sum_compaction_and_singular_values_are_exact():
    gen = torch.Generator().manual_seed(3)
    acc, dense = AccumulatedDelta(), torch.zeros(37, 23, dtype=torch.float64)
    for step in range(9):  # total rank 9·4 = 36 > min(37, 23): the stack is refactored
        d = _delta(gen, "w", 37, 23, 4)
        alpha = -1.0 if step == 5 else 1.0
        acc.add(d, alpha)
        dense += alpha * (d.layers[0].u.double() @ d.layers[0].v.double().T)
        if step in (2, 8):
            u, v = acc.factors("w")
            assert u.shape[1] <= 23
            torch.testing.assert_close(u @ v.T, dense, rtol=1e-10, atol=1e-10)
    s, left, right = acc.top_singular("w", 5)
    torch.testing.assert_close(s, torch.linalg.svdvals(dense)[:5], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close((left * s) @ right.T,
                               (lambda U, S, Vh: (U[:, :5] * S[:5]) @ Vh[:5])(*torch.linalg.svd(dense)),
                               rtol=1e-8, atol=1e-8)
    assert acc.sigma_max("w") == float(s[0])
    assert acc.names == ["w"] and acc.rank("other") == 0 and acc.sigma_max("other") == 0.0


def test_weights_are_kept_apart():
    gen = torch.Generator().manual_seed(4)
    acc = AccumulatedDelta()
    a, b = _delta(gen, "a", 8, 5, 2), _delta(gen, "b", 6, 9, 3, transposed=True)
    acc.add(a.plus(b))
    torch.testing.assert_close(acc.dense("a"), a.layers[0].u.double() @ a.layers[0].v.double().T)
    torch.testing.assert_close(acc.dense("b"), b.layers[0].u.double() @ b.layers[0].v.double().T)
