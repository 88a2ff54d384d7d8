"""The public wrappers: validation, backends(), the reference fallback, fake tensors / compile."""

import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from seqedit import ops

HAS_EXT = ops.backends()["extension"]
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="extension not built")


def t(*shape, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(sum(shape))
    return torch.randn(*shape, generator=g, dtype=dtype).to(device)


ACC = t(4, 4, dtype=torch.float64)
KEYS = t(6, 4)
W, U, V = t(3, 5), t(3, 2), t(5, 2)

INVALID = [
    # second_moment_
    (lambda: ops.second_moment_([[1.0]], KEYS), TypeError, "acc must be a torch.Tensor"),
    (lambda: ops.second_moment_(t(4, dtype=torch.float64), KEYS), ValueError, "acc must be 2-D"),
    (lambda: ops.second_moment_(t(4, 3, dtype=torch.float64), KEYS), ValueError,
     "acc must be square"),
    (lambda: ops.second_moment_(t(4, 4, dtype=torch.bfloat16), KEYS), TypeError, "acc has dtype"),
    (lambda: ops.second_moment_(ACC.clone(), KEYS.double()), TypeError, "keys has dtype"),
    (lambda: ops.second_moment_(ACC.clone(), t(2, 6, 4)), ValueError, "keys must be 2-D"),
    (lambda: ops.second_moment_(ACC.clone(), t(6, 5)), ValueError, "keys has 5 features"),
    (lambda: ops.second_moment_(ACC.clone(), KEYS, t(5)), ValueError, "weights has 5 entries"),
    (lambda: ops.second_moment_(ACC.clone(), KEYS, t(6, 1)), ValueError, "weights must be 1-D"),
    (lambda: ops.second_moment_(ACC.clone(), KEYS, torch.ones(6, dtype=torch.int64)), TypeError,
     "weights has dtype"),
    (lambda: ops.second_moment_(torch.zeros(1, 4, dtype=torch.float64).expand(4, 4), KEYS),
     ValueError, "acc has overlapping memory"),
    (lambda: ops.second_moment_(ACC.clone(), KEYS.to("meta")), ValueError, "keys is on meta"),
    (lambda: ops.second_moment_list_([ACC.clone()], [KEYS, KEYS]), ValueError, "same length"),
    (lambda: ops.second_moment_list_([ACC.clone(), ACC.clone()], [KEYS, t(6, 3)]), ValueError,
     r"keys\[1\] has 3 features"),
    (lambda: ops.second_moment_list_([ACC.clone(), ACC.to("meta")], [KEYS, KEYS.to("meta")]),
     ValueError, "accs must all be on one device"),
    # rank_update_
    (lambda: ops.rank_update_(t(3, 5, 1), U, V), ValueError, "weight must be 2-D"),
    (lambda: ops.rank_update_(W.int(), U, V), TypeError, "weight has dtype"),
    (lambda: ops.rank_update_(W.clone(), U, t(5, 3)), ValueError, "same rank k"),
    (lambda: ops.rank_update_(W.clone(), t(5, 2), t(3, 2)), ValueError, "pass transposed=True"),
    (lambda: ops.rank_update_(W.clone(), U, V, transposed=True), ValueError,
     r"\(transposed=True\)"),
    (lambda: ops.rank_update_(W.clone(), U, V, float("nan")), ValueError, "alpha must be finite"),
    (lambda: ops.rank_update_(W.clone(), U, V, float("inf")), ValueError, "alpha must be finite"),
    (lambda: ops.rank_update_(W.clone(), U, V, "2"), TypeError, "alpha must be a real number"),
    (lambda: ops.rank_update_(W.clone(), U, V, True), TypeError, "alpha must be a real number"),
    (lambda: ops.rank_update_(W.clone(), U, V, transposed=1), TypeError,
     "transposed must be a bool"),
    (lambda: ops.rank_update_(torch.zeros(1, 5).expand(3, 5), U, V), ValueError, "overlapping"),
    (lambda: ops.rank_update_(W.clone(), U.to("meta"), V), ValueError, "u is on meta"),
    (lambda: ops.rank_update_list_([W.clone()], [U], [V], [1.0, 2.0]), ValueError,
     "alphas has 2 entries for 1 layers"),
    (lambda: ops.rank_update_list_([W.clone(), W.clone()], [U, U], [V, t(4, 2)]), ValueError,
     r"weight\[1\] has shape"),
    (lambda: ops.rank_update_list_([W.clone(), W.to("meta")], [U, U.to("meta")], [V, V.to("meta")]),
     ValueError, "weights must all be on one device"),
    # top_singular
    (lambda: ops.top_singular(t(5), 1), ValueError, "a must be 2-D or 3-D"),
    (lambda: ops.top_singular(W.int(), 1), TypeError, "a has dtype"),
    (lambda: ops.top_singular(W, 0), ValueError, r"k must be in \[1, min\(m, n\) = 3\]"),
    (lambda: ops.top_singular(W, 4), ValueError, r"k must be in \[1, min\(m, n\) = 3\]"),
    (lambda: ops.top_singular(W, 1.0), TypeError, "k must be an int"),
    (lambda: ops.top_singular(W, 1, tol=-1e-3), ValueError, "tol must be >= 0"),
    (lambda: ops.top_singular(W, 1, tol=float("nan")), ValueError, "tol must be finite"),
    (lambda: ops.top_singular(W, 1, max_iter=0), ValueError, "max_iter must be >= 1"),
    (lambda: ops.top_singular(W, 1, max_iter=2.5), TypeError, "max_iter must be an int"),
    # top_singular_factored
    (lambda: ops.top_singular_factored(U, V, 3), ValueError, r"min\(m, n, r\) = 2"),
    (lambda: ops.top_singular_factored(U, t(5, 3), 1), ValueError, "must share the rank r"),
    (lambda: ops.top_singular_factored(U, t(1, 5, 2), 1), ValueError, "v must be 2-D"),
    (lambda: ops.top_singular_factored(U, V.to("meta"), 1), ValueError, "v is on meta"),
]


@pytest.mark.parametrize("call,exc,match", INVALID)
def test_invalid_arguments_raise_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_backends_report():
    info = ops.backends()
    assert set(info) >= {"extension", "cpu", "cuda", "torch"}
    assert info["torch"] == torch.__version__
    assert all(isinstance(info[key], bool) for key in ("extension", "cpu", "cuda"))
    assert ("reason" in info) == (not info["extension"])
    if info["cuda"]:
        assert info["extension"]


def test_fallback_warns_once_and_matches(monkeypatch):
    monkeypatch.setattr(ops, "_EXT", None)
    monkeypatch.setattr(ops, "_EXT_REASON", "seqedit._C could not be imported: (simulated)")
    info = ops.backends()
    assert not info["extension"] and not info["cpu"] and "simulated" in info["reason"]

    acc = torch.zeros(4, 4, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # the filter users get
        for _ in range(2):
            ops.second_moment_(acc, KEYS)
        ops.second_moment_(acc, KEYS)  # another call site: still no second warning
    relevant = [w for w in caught if "pure-PyTorch reference" in str(w.message)]
    assert len(relevant) == 1 and relevant[0].category is RuntimeWarning
    assert "simulated" in str(relevant[0].message)
    torch.testing.assert_close(acc, 3 * KEYS.double().T @ KEYS.double())

    w = W.clone()
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
        stats = ops.rank_update_(w, U, V, 0.5, stats=True)
    torch.testing.assert_close(w, W + 0.5 * U @ V.T)
    assert isinstance(stats, ops.RankUpdateStats)


def test_wrappers_return_values():
    acc = ACC.clone()
    assert ops.second_moment_(acc, KEYS) is acc
    accs = ops.second_moment_list_([ACC.clone()], [KEYS])
    assert isinstance(accs, list) and len(accs) == 1
    assert ops.rank_update_(W.clone(), U, V) is None
    stats = ops.rank_update_(W.clone(), U, V, stats=True)
    assert isinstance(stats, ops.RankUpdateStats) and all(isinstance(x, float) for x in stats)
    many = ops.rank_update_list_([W.clone(), W.clone().T.contiguous()], [U, U], [V, V],
                                 alphas=[1.0, 2.0], transposed=[False, True], stats=True)
    assert len(many) == 2 and many[1].abs_sum_delta == pytest.approx(2 * many[0].abs_sum_delta)
    assert ops.rank_update_list_([], [], [], stats=True) == []
    S, Uk, Vk = ops.top_singular(t(6, 4), 2)
    assert S.shape == (2,) and Uk.shape == (6, 2) and Vk.shape == (4, 2)
    S, Uk, Vk = ops.top_singular_factored(U, V, 1)
    assert S.shape == (1,) and Uk.shape == (3, 1) and Vk.shape == (5, 1)


def test_rank_update_on_a_parameter_that_requires_grad():
    p = torch.nn.Parameter(W.clone())
    ops.rank_update_(p, U, V)
    assert p.requires_grad and p.grad_fn is None
    torch.testing.assert_close(p.detach(), W + U @ V.T)


@needs_ext
def test_fake_tensor_shapes_for_every_op():
    with FakeTensorMode() as mode:
        acc, keys = mode.from_tensor(ACC), mode.from_tensor(KEYS)
        w, u, v = mode.from_tensor(W), mode.from_tensor(U), mode.from_tensor(V)
        torch.ops.seqedit.second_moment_(acc, keys, None)
        torch.ops.seqedit.second_moment_list_([acc], [keys], [None])
        assert torch.ops.seqedit.rank_update_(w, u, v, 1.0, False, True).shape == (3,)
        assert torch.ops.seqedit.rank_update_(w, u, v, 1.0, False, False).shape == (0,)
        outs = torch.ops.seqedit.rank_update_list_([w, w], [u, u], [v, v], [1.0, 1.0],
                                                   [False, False], True)
        assert [o.shape for o in outs] == [(3,), (3,)]
        a = mode.from_tensor(t(2, 7, 5, dtype=torch.float64))
        S, Uk, Vk = torch.ops.seqedit.top_singular(a, 3, 1e-4, 10, 0)
        assert (S.shape, Uk.shape, Vk.shape) == ((2, 3), (2, 7, 3), (2, 5, 3))
        assert S.dtype == torch.float64
        S, Uk, Vk = torch.ops.seqedit.top_singular_factored(u.to(torch.bfloat16), v, 2)
        assert (S.shape, Uk.shape, Vk.shape, S.dtype) == ((2,), (3, 2), (5, 2), torch.float32)


@needs_ext
@pytest.mark.parametrize(
    "op,args",
    [
        ("second_moment_", lambda: (ACC.clone(), KEYS, t(6))),
        ("second_moment_list_", lambda: ([ACC.clone()], [KEYS], [None])),
        ("rank_update_", lambda: (W.clone(), U, V, 0.5, False, True)),
        ("top_singular", lambda: (t(7, 5), 2, 1e-4, 50, 0)),
        ("top_singular_factored", lambda: (U, V, 2)),
    ],
)
def test_opcheck(op, args):
    torch.library.opcheck(getattr(torch.ops.seqedit, op).default, args())


@needs_ext
def test_opcheck_rank_update_list():
    # Functionalization (hence AOT dispatch) does not support an op that mutates a Tensor[]
    # and returns a Tensor[]; the schema and fake checks still apply.
    torch.library.opcheck(
        torch.ops.seqedit.rank_update_list_.default,
        ([W.clone()], [U], [V], [1.0], [False], True),
        test_utils=("test_schema", "test_faketensor"),
    )


@needs_ext
def test_wrappers_compile_fullgraph():
    compile_ = lambda f: torch.compile(f, fullgraph=True, backend="aot_eager")  # noqa: E731

    def moments(acc, keys, w):
        ops.second_moment_(acc, keys, w)
        ops.second_moment_list_([acc], [keys])
        return acc

    acc = ACC.clone()
    compile_(moments)(acc, KEYS, t(6))
    expected = ACC.clone()
    ops.second_moment_(expected, KEYS, t(6))
    ops.second_moment_(expected, KEYS)
    torch.testing.assert_close(acc, expected)

    def update(w, u, v):
        ops.rank_update_(w, u, v, 0.5)
        return torch.ops.seqedit.rank_update_(w, u, v, 0.5, False, True)

    w = W.clone()
    stats = compile_(update)(w, U, V)
    torch.testing.assert_close(w, W + U @ V.T)
    assert stats.shape == (3,)

    def singular(a, u, v):
        return ops.top_singular(a, 2), ops.top_singular_factored(u, v, 2)

    a = t(9, 6)
    (S, _, _), (Sf, _, _) = compile_(singular)(a, U, V)
    torch.testing.assert_close(S, ops.top_singular(a, 2)[0])
    torch.testing.assert_close(Sf, ops.top_singular_factored(U, V, 2)[0])
