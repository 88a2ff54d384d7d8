"""Norm control (editors/norm.py): ENCORE's Frobenius-norm term and NAS's norm anchors, each with
MEMIT and with AlphaEdit; the registered "encore" editor; MPES's patience; defaults off."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from editor_helpers import FAST, REQUESTS
from test_values import _linear_problem

from seqedit import __version__, editors
from seqedit.editors import EditContext, SolveError, norm, values
from seqedit.editors.config import ValueConfig
from seqedit.editors.memit import memit_solve
from seqedit.session.hashing import config_dict
from seqedit.session.replay import check_same_editor


def _fro(delta) -> float:
    """‖ΔW‖_F over the whole band (the layers' updates as one vector)."""
    return float(sum(ld.dense().double().norm() ** 2 for ld in delta.layers) ** 0.5)


def _direct(rows: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """argmin_X ‖X rowsᵀ − [r, 0]‖²_F by float64 least squares: the objective, not its normal
    equations (rows stacks the weighted constraint matrices, one row per residual entry)."""
    target = torch.cat([r.T, torch.zeros(rows.shape[0] - r.shape[1], r.shape[0], dtype=r.dtype)])
    return torch.linalg.lstsq(rows, target, driver="gelsd").solution.T


@pytest.mark.parametrize("lam,mu,b,rank_one", [(2.5, 0.7, 3, False), (2.5, 0.7, 9, False),
                                               (0.0, 0.3, 3, False), (4.0, 0.2, 5, True)])
def test_norm_constrained_memit_solve_is_the_objectives_minimiser(lam, mu, b, rank_one):
    """ΔW = R Vᵀ from memit_solve minimises λ‖ΔW C^½‖² + ‖ΔW K − R‖² + μ‖ΔW‖²: d_in = 7,
    d_out = 5, fewer and more keys than d_in, λ = 0 (KKᵀ alone is singular) and a rank-one C
    (λC alone is)."""
    g = torch.Generator().manual_seed(b)
    d_in, d_out = 7, 5
    x = torch.randn(d_in, 1 if rank_one else 40, generator=g, dtype=torch.float64)
    c = x @ x.T / x.shape[1]
    k = torch.randn(d_in, b, generator=g, dtype=torch.float64)
    r = torch.randn(d_out, b, generator=g, dtype=torch.float64)
    ctx = EditContext(None, None, second_moment=lambda layer: c)
    got = r @ memit_solve(ctx, 0, lam, k, mu).T
    evals, evecs = torch.linalg.eigh(c)
    root = evecs * evals.clamp(min=0).sqrt()  # C = root rootᵀ
    rows = torch.cat([k.T, lam ** 0.5 * root.T, mu ** 0.5 * torch.eye(d_in, dtype=torch.float64)])
    torch.testing.assert_close(got, _direct(rows, r), rtol=1e-9, atol=1e-11)


def test_norm_constrained_alphaedit_is_the_objectives_minimiser(llama, requests_):
    """AlphaEdit with μ: ΔW = ΔP P minimises ‖ΔP K − R‖² + (α + μ)‖ΔP‖² on each layer's keys."""
    mu = 0.5
    ed = editors.create("alphaedit", llama.spec, update_norm_weight=mu, **FAST)
    ctx = llama.ctx()
    delta = ed.compute(llama.model, requests_[:2], ctx)
    alpha = ed.config.l2_weight + mu
    for layer, ld in zip(sorted(ed.config.layers), delta.layers):
        p = ed.projector(layer, ctx)
        pk = p @ delta.keys[ld.name].double()
        rows = torch.cat([pk.T, alpha ** 0.5 * p])
        want = _direct(rows, ld.u.double()) @ p
        got = ld.dense().double()
        assert float((got - want).norm() / want.norm()) < 1e-5  # the factors are float32


def test_alphaedit_norm_term_is_l2_weight_raised_by_mu(llama, requests_):
    ctx = llama.ctx()
    a = editors.create("alphaedit", llama.spec, update_norm_weight=0.5, **FAST).compute(
        llama.model, requests_[:1], ctx)
    b = editors.create("alphaedit", llama.spec, l2_weight=1.5, **FAST).compute(llama.model, requests_[:1], ctx)
    assert all(torch.equal(x.u, y.u) and torch.equal(x.v, y.v) for x, y in zip(a.layers, b.layers))


def test_nas_rescales_to_exactly_the_anchor_and_drops_outliers():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 3, 11, generator=g, dtype=torch.float64)
    fallback = torch.randn(4, 3, 11, generator=g, dtype=torch.float64)
    anchor = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    ratio = 0.1 + 1.8 * torch.rand(4, 3, 1, generator=g, dtype=torch.float64)  # ‖v‖/ā in (0.1, 1.9)
    ratio[1, 2], ratio[2, 0] = 2.01, 1.99  # just beyond 2ā: dropped; just within: rescaled
    v = v / v.norm(dim=-1, keepdim=True) * ratio * anchor[:, None]
    out, dropped = norm.anchored(v, fallback, anchor)
    expect_dropped = torch.zeros(4, 3, dtype=torch.bool)
    expect_dropped[1, 2] = True
    assert torch.equal(dropped, expect_dropped)
    assert torch.equal(out[1, 2], fallback[1, 2])
    kept = ~expect_dropped
    torch.testing.assert_close(out.norm(dim=-1)[kept], anchor.expand(4, 3)[kept], rtol=1e-14, atol=0)
    cos = (out * v).sum(-1) / (out.norm(dim=-1) * v.norm(dim=-1))
    torch.testing.assert_close(cos[kept], torch.ones(int(kept.sum()), dtype=torch.float64), rtol=1e-14, atol=0)
    v[0, 0] = 0
    with pytest.raises(SolveError, match="zero"):
        norm.anchored(v, fallback, anchor)


def _nas_norms(t, name, reqs, **kw):
    """‖v*‖ per request and site, read from a NAS run whose anchor never drops anything."""
    sites = len(t.spec.default_edit_layers()) if kw.get("targets") == "mlp_out" else 1
    ed = editors.create(name, t.spec, nas_anchor=(1e3,) * sites, **FAST, **kw)
    return torch.tensor(ed.compute(t.model, reqs, t.ctx()).info["nas_norm_before"])


@pytest.mark.parametrize("name", ["memit", "alphaedit"])
@pytest.mark.parametrize("option", ["encore", "nas"])
def test_each_option_composes_with_each_editor(any_tiny, name, option):
    """The controlled edit is finite, moves every request toward its (controlled) target
    (target_gap < 1) and has a smaller ‖ΔW‖_F than the plain edit of the same request. On these
    random tiny models no edit flips a prediction, so that is not what is checked."""
    t, reqs = any_tiny, REQUESTS[:1]
    plain = editors.create(name, t.spec, **FAST).compute(t.model, reqs, t.ctx())
    if option == "encore":
        kw = {"update_norm_weight": 1.0}
    else:  # an anchor below the solved norm, as for a value vector that has grown
        kw = {"nas_anchor": (0.6 * float(_nas_norms(t, name, reqs)[0, 0]),)}
    controlled = editors.create(name, t.spec, **FAST, **kw).compute(t.model, reqs, t.ctx())
    assert controlled.is_finite()
    assert all(0 <= g < 1 for g in controlled.info["target_gap"])
    assert _fro(controlled) < _fro(plain)
    assert controlled.info.get("nas_dropped", [[False]]) == [[False]]


def test_nas_with_mlp_out_targets_anchors_each_layer(llama):
    reqs = REQUESTS[:1]
    norms = _nas_norms(llama, "memit", reqs, targets="mlp_out")[0]
    assert norms.shape == (len(llama.spec.default_edit_layers()),)
    plain = editors.create("memit", llama.spec, targets="mlp_out", **FAST).compute(llama.model, reqs, llama.ctx())
    anchors = tuple(0.6 * x for x in norms.tolist())
    controlled = editors.create("memit", llama.spec, targets="mlp_out", nas_anchor=anchors, **FAST).compute(
        llama.model, reqs, llama.ctx())
    assert controlled.is_finite() and _fro(controlled) < _fro(plain)
    assert controlled.info["nas_dropped"] == [[False] * len(norms)]
    assert all(0 <= g < 1 for g in controlled.info["target_gap"])


def test_nas_anchor_count_must_fit_the_targets(llama, requests_):
    with pytest.raises(ValueError, match="one norm per target site"):
        editors.create("memit", llama.spec, nas_anchor=(1.0, 1.0), layers=[0, 1, 2])
    with pytest.raises(ValueError, match="nas_anchor norms must be > 0"):
        editors.create("alphaedit", llama.spec, nas_anchor=(0.0,))
    four = editors.create("memit", llama.spec, targets="block", nas_anchor=(1.0,) * 4, layers=[0, 1, 2, 3], **FAST)
    with pytest.raises(ValueError, match="site"):
        four.compute(llama.model, requests_[:1], llama.ctx())


def test_measure_anchor_is_the_mean_solved_norm(llama, requests_, one_thread):
    """The anchor of three requests (none trimmed: ⌊5% of 3⌋ = 0) is the mean of their own."""
    # One thread: with two, a batch of two reduces in another order than a batch of one, and
    # Adam (sign-like on the tiny model's small gradients) turns that into 0.3% of ‖v*‖.
    cfg = editors.create("memit", llama.spec, **FAST).config
    together = norm.measure_anchor(llama.model, requests_, llama.ctx(), cfg, batch_size=2)
    alone = [norm.measure_anchor(llama.model, [r], llama.ctx(), cfg)[0] for r in requests_]
    assert len(together) == 1 and together[0] > 0
    assert together[0] == pytest.approx(sum(alone) / 3, rel=1e-4)
    per_layer = norm.measure_anchor(llama.model, requests_[:1], llama.ctx(),
                                    dataclasses.replace(cfg, targets="mlp_out"))
    assert len(per_layer) == len(cfg.layers) and min(per_layer) > 0


def test_encore_editor_is_memit_with_mpes_and_the_norm_term(llama, gpt2, requests_):
    ed = editors.create("encore", llama.spec, **FAST)
    cfg = ed.config
    assert ed.name == "encore" and cfg.early_stop_on_argmax and cfg.argmax_patience == 3
    assert cfg.update_norm_weight == pytest.approx(cfg.mom2_update_weight / 1500)
    gpt = editors.create("encore", gpt2.spec).config
    assert gpt.argmax_patience == 4 and gpt.update_norm_weight == pytest.approx(gpt.mom2_update_weight / 2000)
    delta = ed.compute(llama.model, requests_[:1], llama.ctx())
    assert delta.method == "encore" and delta.is_finite()
    assert delta.info["update_norm_weight"] == cfg.update_norm_weight


@pytest.mark.parametrize("patience", [2, 3])
def test_argmax_patience_stops_at_the_nth_leading_forward(patience):
    p, forward, margins, d = _linear_problem()
    base = dict(v_num_grad_steps=60, v_lr=0.2, early_stop_loss=0.0, early_stop_on_argmax=True,
                clamp_norm_factor=100.0)
    first = values._optimise(forward, p, 1, d, "cpu", ValueConfig(**base), trace=True)
    res = values._optimise(forward, p, 1, d, "cpu", ValueConfig(**base, argmax_patience=patience), trace=True)
    for i, s in enumerate(res.steps):
        assert first.steps[i] < s < 59
        seen = [torch.zeros(d)] + res.trajectory[i][:s]  # δ at each forward up to the stop
        leading = [bool((margins(x.expand(p.n_req, 1, d))[i] > 0).all()) for x in seen]
        assert sum(leading) == patience and leading[-1]


def test_defaults_leave_the_editors_as_they_were(llama, requests_):
    """New fields at their defaults: the same deltas as spelling them out, and a ledger written
    before the fields existed still matches (check_same_editor fills in defaults). That the
    deltas are bit-identical to the code before these fields was checked once against HEAD."""
    for name in ("memit", "alphaedit"):
        cfg = editors.create(name, llama.spec, **FAST).config
        assert (cfg.update_norm_weight, cfg.nas_anchor, cfg.argmax_patience, cfg.keep_target_norm) == (
            0.0, (), 1, False)
        a = editors.create(name, llama.spec, **FAST).compute(llama.model, requests_[:1], llama.ctx())
        b = editors.create(name, llama.spec, update_norm_weight=0.0, nas_anchor=[], argmax_patience=1,
                           keep_target_norm=False,
                           **FAST).compute(llama.model, requests_[:1], llama.ctx())
        assert all(torch.equal(x.u, y.u) and torch.equal(x.v, y.v) for x, y in zip(a.layers, b.layers))
        assert a.info == b.info and "nas_anchor" not in a.info and "update_norm_weight" not in a.info
        old = {k: v for k, v in config_dict(cfg).items()
               if k not in ("update_norm_weight", "nas_anchor", "argmax_patience", "keep_target_norm")}
        check_same_editor("ledger", {"method": name, "config": old, "seqedit_version": __version__}, name, cfg)
