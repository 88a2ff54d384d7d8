"""PRUNE: the map F, the factored restraint against a full float64 SVD, and the guard in both
modes on a hand-built GuardContext (accumulated ΔW, W₀ with a known σ_max)."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from seqedit.editors.accumulated import AccumulatedDelta
from seqedit.editors.base import Delta, LayerDelta
from seqedit.guards import GuardContext, create
from seqedit.guards.prune import (KINDS, PruneConfig, PruneGuard, restrain_values, restraint)

F64 = torch.float64


def orthonormal(n, k, g):
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=F64))[0]


def factors(m, n, s, g):
    """(U [m, r], V [n, r]) with U Vᵀ = X diag(s) Yᵀ, mixed by a random r×r M so that neither
    factor is orthogonal (U = X diag(s) M, V = Y M⁻ᵀ)."""
    r = len(s)
    x, y = orthonormal(m, r, g), orthonormal(n, r, g)
    mix = torch.eye(r, dtype=F64) + 0.3 * torch.randn(r, r, generator=g, dtype=F64)
    return x * torch.as_tensor(s, dtype=F64) @ mix, y @ torch.linalg.inv(mix).T


def restrained_by_svd(dw, sigma_bar, kind):
    """The original's way in float64: full SVD of the dense ΔW, F on every singular value."""
    u, s, vh = torch.linalg.svd(dw, full_matrices=False)
    return u * restrain_values(s, sigma_bar, kind) @ vh


def dense64(layer):
    return layer.u.to(F64) @ layer.v.to(F64).T


def rel(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


# ---------------------------------------------------------------- F


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("sigma_bar", [0.3, 1.0, 7.5])
def test_f_is_identity_below_continuous_at_and_increasing_above_sigma_bar(kind, sigma_bar):
    s = torch.linspace(0, 20 * sigma_bar, 4001, dtype=F64)
    f = restrain_values(s, sigma_bar, kind)
    below = s < sigma_bar
    assert torch.equal(f[below], s[below])
    assert bool((f.diff() > 0).all())
    at = torch.tensor([sigma_bar * (1 - 1e-12), sigma_bar, sigma_bar * (1 + 1e-12)], dtype=F64)
    # F(σ̄) = σ̄ exactly; 1e-12 either side moves F by at most its slope (≤ 20 here) times that.
    assert float(restrain_values(at[1:2], sigma_bar, kind)) == sigma_bar
    assert torch.allclose(restrain_values(at, sigma_bar, kind), at, rtol=1e-10, atol=0)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_f_shrinks_above_sigma_bar_when_sigma_bar_is_at_least_one_over_ln_alpha(kind):
    alpha = KINDS[kind]
    sigma_bar = 1.01 / math.log(alpha) if alpha else 0.1
    s = sigma_bar * torch.linspace(1.001, 50, 500, dtype=F64)
    f = restrain_values(s, sigma_bar, kind)
    assert bool((f < s).all()) and bool((f > sigma_bar).all())


def test_f_log_kinds_are_log_alpha_above_sigma_bar():
    s, sb = torch.tensor([3.0, 10.0, 100.0], dtype=F64), 3.0
    for kind, alpha in (("log", math.e), ("log2", 2.0), ("log1_5", 1.5), ("log1_2", 1.2)):
        want = torch.log(s) / math.log(alpha) - math.log(sb) / math.log(alpha) + sb
        assert torch.allclose(restrain_values(s, sb, kind), want, rtol=1e-14)
    assert torch.allclose(restrain_values(s, sb, "linear"), (s + sb) / 2, rtol=1e-14)


# ---------------------------------------------------------------- restraint from factors

CASES = [  # (m, n, singular values, σ̄)
    (37, 53, [9.0, 5.5, 4.1, 2.0, 0.7], 3.0),            # some above, some below
    (53, 37, [9.0, 5.5, 4.1, 2.0, 0.7], 3.0),            # wide ↔ tall
    (129, 17, [40, 30, 20, 15, 12, 11, 10.5, 10.2, 10.1, 9.0, 8.5, 8.2, 3, 1], 8.0),  # > 8 above
    (64, 48, [2.9, 1.0, 0.2], 3.0),                      # none above
    (31, 40, [6.0] + [4.0] * 30, 3.5),                   # every direction above (k grows to r)
    (1, 23, [4.0], 2.0),                                 # a single row
]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("m,n,s,sigma_bar", CASES)
def test_restraint_equals_full_svd_reconstruction(kind, m, n, s, sigma_bar):
    g = torch.Generator().manual_seed(m * 1000 + n)
    u, v = factors(m, n, s, g)
    cu, cv = restraint(u, v, sigma_bar, kind)
    above = sum(x >= sigma_bar for x in s)
    assert cu.shape == (m, above) and cv.shape == (n, above)
    dw = u @ v.T
    want = restrained_by_svd(dw, sigma_bar, kind)
    assert rel(dw + cu @ cv.T, want) <= 1e-6
    # The directions below σ̄ are untouched: the correction is orthogonal to them on both sides.
    left, sv, right = torch.linalg.svd(dw, full_matrices=False)
    lo = sv < sigma_bar
    corr = cu @ cv.T
    assert float(torch.linalg.norm(corr @ right[lo].T)) <= 1e-10 * float(sv[0])
    assert float(torch.linalg.norm(left[:, lo].T @ corr)) <= 1e-10 * float(sv[0])


def test_restraint_of_a_stack_longer_than_its_rank():
    # r = 12 factors of a 7×9 matrix (what an accumulated ΔW looks like before compaction).
    g = torch.Generator().manual_seed(3)
    u = 2 * torch.randn(7, 12, generator=g, dtype=F64)
    v = torch.randn(9, 12, generator=g, dtype=F64)
    dw = u @ v.T
    sv = torch.linalg.svdvals(dw)
    sigma_bar = float(sv[2] + sv[3]) / 2  # the top 3 reach it
    cu, cv = restraint(u, v, sigma_bar, "log")
    assert cu.shape[1] == 3
    assert rel(dw + cu @ cv.T, restrained_by_svd(dw, sigma_bar, "log")) <= 1e-6


def test_restraint_of_nothing_is_empty():
    cu, cv = restraint(torch.zeros(5, 0, dtype=F64), torch.zeros(4, 0, dtype=F64), 1.0, "log")
    assert cu.shape == (5, 0) and cv.shape == (4, 0)
    cu, cv = restraint(torch.zeros(5, 2, dtype=F64), torch.zeros(4, 2, dtype=F64), 1.0, "log")
    assert cu.shape[1] == 0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_restraint_needs_a_positive_sigma_bar(bad):
    with pytest.raises(ValueError, match="sigma_bar"):
        restraint(torch.ones(3, 1, dtype=F64), torch.ones(3, 1, dtype=F64), bad, "log")


# ---------------------------------------------------------------- the guard

SIGMA_BAR = {"a.weight": 6.0, "b.weight": 7.0, "c.weight": 6.5}
SHAPES = {"a.weight": (40, 24), "b.weight": (30, 50), "c.weight": (20, 20)}  # [out, in]
TRANSPOSED = {"a.weight": False, "b.weight": True, "c.weight": False}


def base_weights(dtype=torch.float32):
    """W₀ per weight, stored as the model would ([in, out] for the transposed one), with a
    known σ_max well separated from σ_2."""
    g = torch.Generator().manual_seed(11)
    out = {}
    for name, (m, n) in SHAPES.items():
        k = min(m, n)
        w = torch.linspace(0.5, 0.05, k, dtype=F64) * SIGMA_BAR[name]
        w[0] = SIGMA_BAR[name]
        dense = orthonormal(m, k, g) * w @ orthonormal(n, k, g).T
        out[name] = (dense.T if TRANSPOSED[name] else dense).to(dtype).contiguous()
    return out


def make_ctx(accumulated, base):
    return GuardContext(model=torch.nn.Module(), spec=SimpleNamespace(mlp_out_transposed=False),
                        editor=None, edit_ctx=None, accumulated=accumulated,
                        base_weight=base.__getitem__)


def edit(names, g, scale=5.0, rank=2):
    """A step's Delta: rank-`rank` float32 factors per weight, large enough to pass σ̄ soon."""
    layers = [LayerDelta(name, (scale * torch.randn(SHAPES[name][0], rank, generator=g)
                                / math.sqrt(SHAPES[name][0])),
                         torch.randn(SHAPES[name][1], rank, generator=g)
                         / math.sqrt(SHAPES[name][1]), TRANSPOSED[name])
              for name in names]
    return Delta("memit", layers)


def true_sigma_bar(w0):
    return float(torch.linalg.svdvals(w0.to(F64))[0])


def check_restrained(before, step, result, kind, sigma_bars):
    """Every weight: ΔW_before + result = F(ΔW_before + step) (step: the edit's Delta, or None
    for a view, which corrects ΔW_before itself)."""
    added = {d.name: dense64(d) for d in result.layers}
    edited = {d.name: dense64(d) for d in step.layers} if step is not None else {}
    for name in sorted(set(before) | set(added) | set(edited)):
        zero = torch.zeros(SHAPES[name], dtype=F64)
        total = before.get(name, zero) + edited.get(name, zero)
        after = before.get(name, zero) + added.get(name, zero)
        assert rel(after, restrained_by_svd(total, sigma_bars[name], kind)) <= 1e-6, name


def dense_of(acc):
    return {name: acc.dense(name) for name in acc.names}


@pytest.mark.parametrize("kind", ["log", "log1_2", "linear"])
def test_every_mode_makes_the_model_w0_plus_f_of_the_total_change(kind):
    g = torch.Generator().manual_seed(5)
    base = base_weights()
    acc = AccumulatedDelta()
    guard = PruneGuard(kind=kind, mode="every")
    ctx = make_ctx(acc, base)
    sigma_bars = {n: true_sigma_bar(w) for n, w in base.items()}
    plan = [["a.weight", "b.weight"], ["a.weight", "b.weight"], ["a.weight"], ["b.weight"],
            ["a.weight", "b.weight", "c.weight"], ["c.weight"]]
    restrained_any = False
    for step, names in enumerate(plan, 1):
        delta = edit(names, g)
        before = dense_of(acc)
        total = {n: before.get(n, 0) + sum(dense64(d) for d in delta.layers if d.name == n)
                 for n in set(before) | set(names)}
        out = guard.guard(delta, [], ctx)
        rec = out.info["guards"]["prune"]
        assert rec["applied"] and rec["edits"] == step
        for name, entry in rec["weights"].items():
            s = torch.linalg.svdvals(total[name])
            assert entry["sigma_bar"] == pytest.approx(sigma_bars[name], rel=1e-9)
            assert entry["restrained"] == int((s >= sigma_bars[name]).sum())
            assert entry["top_before"] == pytest.approx(float(s[0]), rel=1e-9)
            top_after = restrain_values(s[:1], sigma_bars[name], kind)
            assert entry["top_after"] == pytest.approx(float(top_after), rel=1e-9)
            restrained_any |= entry["restrained"] > 0
        # The model after this step is W₀ + F(ΔW_before + δ); the edit itself is still in it.
        check_restrained(before, delta, out, kind, sigma_bars)
        for d in out.layers:
            assert d.transposed == TRANSPOSED[d.name]
        acc.add(out)
        guard.commit(out)
        for name, entry in rec["weights"].items():
            assert acc.sigma_max(name) == pytest.approx(entry["top_after"], rel=1e-6)
    assert restrained_any  # the test must actually exercise the restraint


def test_every_k_counts_committed_edits_only():
    g = torch.Generator().manual_seed(6)
    base = base_weights()
    acc = AccumulatedDelta()
    guard = PruneGuard(mode="every", every=3)
    ctx = make_ctx(acc, base)
    applied = []
    for step in range(1, 9):
        delta = edit(["a.weight"], g)
        out = guard.guard(delta, [], ctx)
        applied.append(out.info["guards"]["prune"]["applied"])
        if not out.info["guards"]["prune"]["applied"]:
            assert out is delta
        if step == 4:
            continue  # refused after the guard: never committed, so it does not count
        acc.add(out)
        guard.commit(out)
        if step == 5:  # rolled back
            acc.add(out, -1.0)
            guard.revert(out)
    # committed edits counted at steps 1..8 (incl. the one guarded): 1, 2, 3, 4 (refused),
    # 4 (rolled back), 4, 5, 6
    assert applied == [False, False, True, False, False, False, False, True]


def test_every_mode_corrects_weights_the_step_does_not_touch():
    # every=2: step 1 puts `b` above σ̄ unrestrained; step 2 edits only `a`, yet restrains `b`,
    # whose storage flag was learned from the first delta.
    g = torch.Generator().manual_seed(7)
    base = base_weights()
    acc = AccumulatedDelta()
    guard = PruneGuard(mode="every", every=2)
    ctx = make_ctx(acc, base)
    first = edit(["b.weight"], g, scale=30.0)
    guard.commit(guard.guard(first, [], ctx))
    acc.add(first)
    before = dense_of(acc)
    step = edit(["a.weight"], g, scale=0.1)
    out = guard.guard(step, [], ctx)
    names = {d.name: d for d in out.layers}
    assert "b.weight" in names and names["b.weight"].transposed
    assert out.info["guards"]["prune"]["weights"]["b.weight"]["restrained"] >= 1
    check_restrained(before, step, out, "log", {n: true_sigma_bar(w) for n, w in base.items()})


def test_orientation_of_an_unseen_weight_comes_from_w0s_shape():
    g = torch.Generator().manual_seed(8)
    base = base_weights()
    acc = AccumulatedDelta()
    acc.add(edit(["b.weight"], g, scale=30.0))
    view = PruneGuard().view(make_ctx(acc, base))  # a fresh guard (e.g. resumed) saw no delta
    assert [d.transposed for d in view.layers] == [True]


@pytest.mark.parametrize("kind", ["log", "log2", "linear"])
def test_posthoc_guard_is_identity_and_view_gives_w0_plus_f(kind):
    g = torch.Generator().manual_seed(9)
    base = base_weights()
    acc = AccumulatedDelta()
    guard = PruneGuard(kind=kind)
    assert guard.config.mode == "posthoc"
    ctx = make_ctx(acc, base)
    assert guard.view(ctx) is None  # nothing edited yet
    for _ in range(4):
        delta = edit(["a.weight", "b.weight", "c.weight"], g)
        out = guard.guard(delta, [], ctx)
        assert out is delta and "guards" not in out.info
        acc.add(out)
        guard.commit(out)
    before = dense_of(acc)
    view = guard.view(ctx)
    rec = view.info["guards"]["prune"]
    assert rec["edits"] == 4 and set(rec["weights"]) == set(SHAPES)
    assert sum(e["restrained"] for e in rec["weights"].values()) > 0
    check_restrained(before, None, view, kind, {n: true_sigma_bar(w) for n, w in base.items()})
    assert {d.name: d.transposed for d in view.layers} == {
        n: TRANSPOSED[n] for n in rec["weights"] if rec["weights"][n]["restrained"]}
    assert dense_of(acc).keys() == before.keys()  # view changes nothing
    assert all(torch.equal(acc.dense(n), before[n]) for n in before)


def test_posthoc_view_with_nothing_above_sigma_bar_is_an_empty_correction():
    g = torch.Generator().manual_seed(10)
    acc = AccumulatedDelta()
    acc.add(edit(["a.weight"], g, scale=0.01))
    view = PruneGuard().view(make_ctx(acc, base_weights()))
    assert view.layers == [] and view.info["guards"]["prune"]["weights"]["a.weight"][
        "restrained"] == 0


def test_every_mode_has_no_view():
    acc = AccumulatedDelta()
    acc.add(edit(["a.weight"], torch.Generator().manual_seed(1)))
    assert PruneGuard(mode="every").view(make_ctx(acc, base_weights())) is None


def test_sigma_bar_from_a_bf16_base_weight_is_computed_once():
    base = base_weights(torch.bfloat16)
    calls = []

    def base_weight(name):
        calls.append(name)
        return base[name]

    ctx = make_ctx(AccumulatedDelta(), base)
    ctx.base_weight = base_weight
    guard = PruneGuard()
    for _ in range(3):
        got = guard.sigma_bar("b.weight", ctx)
    assert got == pytest.approx(true_sigma_bar(base["b.weight"]), rel=1e-9)
    assert calls == ["b.weight"]


def test_a_sigma_bar_below_one_over_ln_alpha_warns():
    ctx = make_ctx(AccumulatedDelta(), {"w": 0.1 * torch.eye(4)})
    with pytest.warns(RuntimeWarning, match="enlarges"):
        PruneGuard(kind="log").sigma_bar("w", ctx)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("options,field", [
    ({"kind": "ln"}, "kind"), ({"kind": None}, "kind"), ({"mode": "after"}, "mode"),
    ({"every": 0}, "every"), ({"every": -2}, "every"), ({"every": 1.5}, "every"),
    ({"every": True}, "every"), ({"every": "3"}, "every"),
])
def test_bad_config_names_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        PruneConfig(**options)
    with pytest.raises(ValueError, match=field):
        create("prune", **options)


def test_config_round_trips_through_json():
    for cfg in (PruneConfig(), PruneConfig(kind="linear", mode="every", every=10)):
        data = json.loads(json.dumps(cfg.to_dict()))
        assert PruneConfig.from_dict(data) == cfg
    assert PruneConfig.from_dict({}) == PruneConfig()
    with pytest.raises(ValueError, match="prune has no option"):
        PruneConfig.from_dict({"kind": "log", "alpha": 2})


def test_registry_builds_the_guard_from_options():
    guard = create("prune", kind="log2", mode="every", every=4)
    assert isinstance(guard, PruneGuard) and guard.name == "prune"
    assert guard.config == PruneConfig(kind="log2", mode="every", every=4)
    assert PruneGuard(PruneConfig(every=2)).config.every == 2
    with pytest.raises(ValueError, match="not both"):
        PruneGuard(PruneConfig(), kind="log")
