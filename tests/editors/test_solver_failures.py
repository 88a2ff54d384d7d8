"""Solver failures: malformed, singular, indefinite or ill-conditioned key statistics and
non-finite intermediates are SolveErrors naming the layer, raised before anything changes; healthy
statistics still edit."""
from __future__ import annotations

import copy
import re
import zlib

import pytest
import torch
from editor_helpers import FAST, weights_digest

from seqedit import editors
from seqedit.editors import SolveError, _solve, keys
from seqedit.editors.memit import memit_solve

METHODS = ["rome", "memit", "alphaedit"]


def _gen(*parts) -> torch.Generator:
    # A distinct stream per case, so no two cases share their random matrices.
    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))


def _spectral(d: int, evals: torch.Tensor, gen) -> torch.Tensor:
    """Q diag(evals) Qᵀ for a random orthogonal Q, exactly symmetric."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    c = (q * evals) @ q.T
    return (c + c.T) / 2


def _decaying(d: int, decades: float, scale: float, gen) -> torch.Tensor:
    """A PD matrix with condition number 10**decades, eigenvalues spread over it in random order."""
    evals = torch.logspace(-decades, 0, d, dtype=torch.float64)[torch.randperm(d, generator=gen)]
    return _spectral(d, scale * evals, gen)


def _zeros(c, gen):
    return torch.zeros_like(c)


def _indefinite(c, gen):
    """Up to three clearly negative eigenvalues along random (delocalised) directions: the diagonal
    stays positive, so only a factorisation or eigendecomposition can tell."""
    d = c.shape[0]
    evals = 0.5 + torch.rand(d, generator=gen, dtype=torch.float64)
    n_neg = int(torch.randint(1, 4, (1,), generator=gen))
    evals[torch.randperm(d, generator=gen)[:n_neg]] = -(0.05 + 0.95 * torch.rand(n_neg, generator=gen,
                                                                                  dtype=torch.float64))
    out = _spectral(d, evals * float(c.diagonal().max()), gen)
    assert float(out.diagonal().min()) > 0
    return out


def _negative_diagonal(c, gen):
    out = c.clone()
    i = int(torch.randint(0, c.shape[0], (1,), generator=gen))
    out[i, i] = -out[i, i]
    return out


def _rank_deficient(c, gen):
    d = c.shape[0]
    r = d // 4
    a = torch.randn(d, r, generator=gen, dtype=torch.float64)
    return a @ a.T * (float(c.trace()) / float((a * a).sum()))


def _ill_conditioned(c, gen):
    return _decaying(c.shape[0], 14.5, float(c.diagonal().max()), gen)


def _wrong_shape(c, gen):
    d = c.shape[0]
    shape = [(d + 3, d + 3), (d, d - 1), (d,), (1, d, d)][int(torch.randint(0, 4, (1,), generator=gen))]
    return torch.rand(*shape, generator=gen, dtype=torch.float64)


def _int_dtype(c, gen):
    return (c * 1e4).round().to(torch.int64)


def _not_a_tensor(c, gen):
    return c.numpy()


def _with_nan(c, gen):
    out = c.clone()
    i, j = torch.randint(0, c.shape[0], (2,), generator=gen).tolist()
    out[i, j] = out[j, i] = float("nan")
    return out


def _with_inf(c, gen):
    out = c.clone()
    i = int(torch.randint(0, c.shape[0], (1,), generator=gen))
    out[i, i] = float("inf")
    return out


def _asymmetric(c, gen):
    noise = torch.randn(c.shape, generator=gen, dtype=torch.float64)
    return c + 0.1 * float(c.abs().max()) * (noise - noise.T)


# case → (builder, what the reason must say)
EVERY_EDITOR = {
    "zeros": (_zeros, "zeros"),
    "indefinite": (_indefinite, "indefinite"),
    "negative_diagonal": (_negative_diagonal, "negative diagonal"),
    "wrong_shape": (_wrong_shape, r"\[160, 160\]"),
    "int_dtype": (_int_dtype, "int64"),
    "not_a_tensor": (_not_a_tensor, "ndarray"),
    "nan": (_with_nan, "non-finite"),
    "inf": (_with_inf, "non-finite"),
    "asymmetric": (_asymmetric, "not symmetric"),
}
# Singular or ill-conditioned but PSD: fatal for MEMIT and ROME, AlphaEdit's null space.
NEEDS_FULL_RANK = {
    "rank_deficient": (_rank_deficient, "positive definite|ill-conditioned"),
    "ill_conditioned": (_ill_conditioned, "ill-conditioned|positive definite"),
}


def _layers(ed) -> list[int]:
    return [ed.config.layer] if ed.name == "rome" else sorted(ed.config.layers)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def _unchanged(model, snap) -> bool:
    return all(torch.equal(p, snap[n]) for n, p in model.state_dict().items())


def _assert_refused(t, ed, requests, c, match):
    snap = _snapshot(t.model)
    with pytest.raises(SolveError) as err:
        ed.compute(t.model, requests, t.ctx(c=c))
    reason = err.value.reason
    assert re.search(match, reason), reason
    named = [int(x) for x in re.findall(r"layer (\d+)", reason)]
    assert named and set(named) <= set(_layers(ed)), reason
    assert _unchanged(t.model, snap)
    assert all(p.grad is None for p in t.model.parameters())
    return reason


def _bad_stats(t, case, builder):
    return {layer: builder(c, _gen(case, t.spec.arch, layer)) for layer, c in t.c.items()}


@pytest.mark.parametrize("case", sorted(EVERY_EDITOR))
@pytest.mark.parametrize("method", METHODS)
def test_malformed_or_indefinite_statistics_are_refused(any_tiny, requests_, method, case):
    t = any_tiny
    builder, match = EVERY_EDITOR[case]
    ed = editors.create(method, t.spec, **FAST)
    reqs = requests_[:1] if method == "rome" else requests_[:2]
    reason = _assert_refused(t, ed, reqs, _bad_stats(t, case, builder), match)
    if case == "wrong_shape":
        assert "got [" in reason  # the shape that was given, next to the one expected


@pytest.mark.parametrize("case", sorted(NEEDS_FULL_RANK))
@pytest.mark.parametrize("method", ["rome", "memit"])
def test_singular_or_ill_conditioned_statistics_are_refused(any_tiny, requests_, method, case):
    t = any_tiny
    builder, match = NEEDS_FULL_RANK[case]
    ed = editors.create(method, t.spec, **FAST)
    reqs = requests_[:1] if method == "rome" else requests_[1:3]
    _assert_refused(t, ed, reqs, _bad_stats(t, case, builder), match)


@pytest.mark.parametrize("case", sorted(NEEDS_FULL_RANK))
def test_alphaedit_writes_into_the_null_space_of_singular_statistics(any_tiny, requests_, case):
    """For AlphaEdit small eigenvalues are the point: the edit goes through, finite and non-zero,
    and leaves the keys C does see alone."""
    t = any_tiny
    c = _bad_stats(t, case, NEEDS_FULL_RANK[case][0])
    ed = editors.create("alphaedit", t.spec, **FAST)
    ctx = t.ctx(c=c)
    before = weights_digest(t.model)
    delta = ed.compute(t.model, requests_[:2], ctx)
    assert weights_digest(t.model) == before
    assert delta.is_finite()
    for layer, ld in zip(_layers(ed), delta.layers):
        p = ed.projector(layer, ctx)
        dw = ld.dense().double()
        assert float(dw.abs().max()) > 0
        keep = torch.eye(p.shape[0], dtype=torch.float64) - p
        assert float((dw @ keep).abs().max()) <= 1e-5 * float(dw.abs().max())


@pytest.mark.parametrize("decades", [2.5, 6, 9])
@pytest.mark.parametrize("method", METHODS)
def test_healthy_random_statistics_still_edit(any_tiny, requests_, method, decades):
    """Random PD statistics up to κ₂ = 1e9 pass every check and give a finite, non-zero update."""
    t = any_tiny
    c = {layer: _decaying(cl.shape[0], decades, float(cl.diagonal().max()), _gen("ok", decades, layer))
         for layer, cl in t.c.items()}
    ed = editors.create(method, t.spec, **FAST)
    reqs = requests_[:1] if method == "rome" else requests_[:3]
    snap = _snapshot(t.model)
    delta = ed.compute(t.model, reqs, t.ctx(c=c))
    assert _unchanged(t.model, snap)
    assert delta.is_finite()
    assert all(float(ld.dense().abs().max()) > 0 for ld in delta.layers)
    if method == "memit":  # the checks did not change the solution: normal equations hold
        lam = ed.config.mom2_update_weight
        for layer, ld in zip(_layers(ed), delta.layers):
            k = delta.keys[ld.name].double()
            lhs = ld.dense().double() @ (lam * c[layer] + k @ k.T)
            rhs = ld.u.double() @ k.T
            assert torch.allclose(lhs, rhs, rtol=1e-4, atol=1e-4 * float(rhs.abs().max()))


def test_memit_direct_path_refuses_what_keys_cannot_fix_and_solves_what_they_can(llama):
    """λC singular: the direct path factors λC + KKᵀ; with too few keys that stays singular
    (SolveError naming the layer), with keys spanning the null space it solves."""
    d = llama.c[2].shape[0]
    gen = _gen("direct", d)
    rank = _rank_deficient(llama.c[2], gen)
    ctx = llama.ctx(c={2: rank})
    few = torch.randn(d, 5, generator=gen, dtype=torch.float64)
    with pytest.raises(SolveError, match="layer 2.*λ·C alone is singular"):
        memit_solve(ctx, 2, 50.0, few)
    many = torch.randn(d, d + 7, generator=gen, dtype=torch.float64)
    got = memit_solve(ctx, 2, 50.0, many)
    want = torch.linalg.solve(50.0 * rank + many @ many.T, many)
    assert float((got - want).norm() / want.norm()) < 1e-8


def test_memit_without_lambda_needs_as_many_keys_as_dimensions(llama):
    d = llama.c[1].shape[0]
    k = torch.randn(d, 3, generator=_gen("lam0"), dtype=torch.float64)
    with pytest.raises(SolveError, match="layer 1.*mom2_update_weight is 0"):
        memit_solve(llama.ctx(), 1, 0.0, k)


def test_memit_non_finite_keys_are_a_solve_error(llama):
    d = llama.c[0].shape[0]
    k = torch.randn(d, 2, generator=_gen("nan keys"), dtype=torch.float64)
    k[int(torch.randint(0, d, (1,), generator=_gen("nan pos")))] = float("nan")
    with pytest.raises(SolveError, match="layer 0.*non-finite"):
        memit_solve(llama.ctx(), 0, 10.0, k)


def test_a_refusal_is_memoised_not_refactored(llama, requests_, monkeypatch):
    """A session with bad statistics pays the failed factorisation once, not once per edit."""
    calls = []
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda a, **kw: calls.append(a.shape) or real(a, **kw))
    ed = editors.create("rome", llama.spec, **FAST)
    layer, d = ed.config.layer, llama.c[ed.config.layer].shape[0]
    gen = _gen("memo")
    evals = torch.rand(d, generator=gen, dtype=torch.float64) + 0.5
    evals[int(torch.randint(0, d, (1,), generator=gen))] = -0.2  # delocalised: the diagonal stays positive
    ctx = llama.ctx(c={layer: _spectral(d, evals, gen)})
    for r in requests_[:2]:
        with pytest.raises(SolveError, match="indefinite"):
            ed.compute(llama.model, [r], ctx)
    assert len(calls) == 2  # C, then the shifted C that tells indefinite from singular


def test_rome_bare_key_orthogonal_to_the_update_direction_is_refused(llama, requests_):
    """A PD C with C⁻¹k̄ ⟂ k_p would divide by uᵀk_p ≈ 0 (an unbounded ΔW): refused."""
    ed = editors.create("rome", llama.spec, **FAST)
    layer = ed.config.layer
    ctx = llama.ctx()
    templates = keys.context_templates(llama.model, llama.tokenizer, ctx)
    found = keys.compute_keys(llama.model, llama.spec, llama.tokenizer, requests_[:1], templates, [layer])
    k_bar, k_p = found[layer][0].double(), found[("bare_key", layer)][0].double()
    w = k_bar - (k_bar @ k_p) / (k_p @ k_p) * k_p  # ⟂ k_p, and wᵀk̄ = ‖w‖² > 0
    w_hat = w / w.norm()
    eye = torch.eye(len(w), dtype=torch.float64)
    c = torch.outer(k_bar, k_bar) / float(w @ k_bar) + float(k_bar @ k_bar) * (eye - torch.outer(w_hat, w_hat))
    c = (c + c.T) / 2  # PD, and C w = k̄
    ctx.second_moment = {layer: c}.__getitem__
    before = weights_digest(llama.model)
    with pytest.raises(SolveError, match=f"layer {layer}.*orthogonal"):
        ed.compute(llama.model, requests_[:1], ctx)
    assert weights_digest(llama.model) == before


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_target_value_is_a_solve_error(llama, requests_, method):
    """Non-finite logits above the edited layers (here a NaN in the final norm) make v* NaN."""
    broken = copy.deepcopy(llama.model)
    norm = llama.spec.final_norm(broken)
    with torch.no_grad():
        norm.weight[int(torch.randint(0, norm.weight.numel(), (1,), generator=_gen("norm", method)))] = float("nan")
    ed = editors.create(method, llama.spec, **FAST)
    ctx = llama.ctx()
    keys.context_templates(llama.model, llama.tokenizer, ctx)  # sampled from the healthy model
    before = weights_digest(broken)
    with pytest.raises(SolveError, match=r"target value at layers? \[?\d.*not finite"):
        ed.compute(broken, requests_[:1], ctx)
    assert weights_digest(broken) == before


def test_sampling_templates_from_a_model_with_non_finite_logits_is_a_solve_error(llama, requests_):
    broken = copy.deepcopy(llama.model)
    with torch.no_grad():
        llama.spec.final_norm(broken).weight.fill_(float("inf"))
    with pytest.raises(SolveError, match="logits are not finite"):
        editors.create("rome", llama.spec, **FAST).compute(broken, requests_[:1], llama.ctx())


def test_alphaedit_corrupted_state_is_refused(llama, requests_):
    """Σ K_p K_pᵀ made indefinite (a delta reverted that was never committed) breaks
    ⟨V, PK⟩ ≥ α‖V‖², which every PSD state satisfies: refused rather than solved."""
    low = {layer: _decaying(c.shape[0], 6, float(c.diagonal().max()), _gen("state", layer))
           for layer, c in llama.c.items()}
    ed = editors.create("alphaedit", llama.spec, nullspace_threshold=1e-3, **FAST)
    ctx = llama.ctx(c=low)
    first = ed.compute(llama.model, requests_[:1], ctx)
    scaled = type(first)(first.method, first.layers, {n: 30.0 * k for n, k in first.keys.items()})
    ed.revert(scaled)
    with pytest.raises(SolveError, match="layer \\d+.*singular or indefinite"):
        ed.compute(llama.model, requests_[:1], ctx)


@pytest.mark.parametrize("d", [7, 61, 160])
def test_condition_estimate_tracks_the_condition_number(d):
    gen = _gen("kappa", d)
    for decades in (1.5, 6.0, 9.0, 13.0):
        a = _decaying(d, decades, 3.7, gen)
        chol = torch.linalg.cholesky(a)
        est = _solve.condition_estimate(a, chol)
        kappa2 = float(torch.linalg.cond(a))
        assert kappa2 / 4 <= est <= d * kappa2 * (1 + 1e-6), (decades, est, kappa2)
    assert _solve.spd_factor(_decaying(d, 9, 2.0, gen))[1] is None
    chol, problem = _solve.spd_factor(_decaying(d, 14, 2.0, gen))
    assert chol is None and "ill-conditioned" in problem


def test_indefinite_is_told_apart_from_singular():
    gen = _gen("inertia")
    d = 37
    a = torch.randn(d, 9, generator=gen, dtype=torch.float64)
    assert _solve.indefinite(a @ a.T) is None  # PSD of rank 9: singular, not indefinite
    evals = torch.rand(d, generator=gen, dtype=torch.float64) + 0.1
    evals[int(torch.randint(0, d, (1,), generator=gen))] = -0.05
    assert "indefinite" in _solve.indefinite(_spectral(d, evals, gen))
