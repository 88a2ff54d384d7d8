"""Target-value optimisation: the fast path computes what the reference path computes."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from seqedit.data import EditRequest
from seqedit.editors import keys, values
from seqedit.editors._replay import SuffixReplay
from seqedit.editors.config import ValueConfig

from editor_helpers import REQUESTS, Tiny


@pytest.fixture(scope="module")
def llama64():
    return Tiny("llama", dtype=torch.float64)


@pytest.fixture(scope="module")
def gpt2_64():
    return Tiny("gpt2", dtype=torch.float64)


@pytest.fixture(scope="module")
def gemma3_64():
    return Tiny("gemma3", dtype=torch.float64)


@pytest.fixture(scope="module")
def qwen2_64():
    return Tiny("qwen2", dtype=torch.float64)


def _templates(t: Tiny):
    return keys.context_templates(t.model, t.tokenizer, t.ctx(), length=5)


def _both(t: Tiny, reqs, site, layer, suffix=True, **cfg):
    cfg = ValueConfig(**{"v_num_grad_steps": 6, **cfg})
    temps = _templates(t)
    kw = dict(layer=layer, site=site, cfg=cfg, trace=True)
    fast = values._fast_target_values(t.model, t.spec, t.tokenizer, reqs, temps, suffix=suffix, **kw)
    assert fast.mode == ("suffix" if suffix else "full")
    ref = values.reference_target_values(t.model, t.spec, t.tokenizer, reqs, temps, **kw)
    return fast, ref


def _assert_same(fast, ref, rtol):
    assert fast.steps == ref.steps
    for tf, tr in zip(fast.trajectory, ref.trajectory):
        assert len(tf) == len(tr) > 0
        for a, b in zip(tf, tr):
            assert torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.norm()))
    assert torch.allclose(fast.v_init, ref.v_init, rtol=rtol, atol=rtol)
    assert torch.allclose(fast.v_star, ref.v_star, rtol=rtol, atol=rtol * float(ref.v_star.norm()))
    assert fast.p_first == pytest.approx(ref.p_first, rel=rtol * 10)
    assert fast.p_last == pytest.approx(ref.p_last, rel=rtol * 10)


@pytest.mark.parametrize("site,layer", [("block", 1), ("mlp_out", 2), ("block", 3)])
@pytest.mark.parametrize("arch", ["llama64", "gpt2_64", "gemma3_64", "qwen2_64"])
def test_fast_equals_reference_float64(arch, site, layer, requests_, request):
    t = request.getfixturevalue(arch)
    fast, ref = _both(t, requests_[:2], site, layer)
    _assert_same(fast, ref, rtol=1e-9)


@pytest.mark.parametrize("arch", ["llama64", "gpt2_64"])
def test_full_row_replay_equals_reference(arch, requests_, request):
    t = request.getfixturevalue(arch)
    fast, ref = _both(t, requests_[:2], "mlp_out", 1, suffix=False)
    _assert_same(fast, ref, rtol=1e-9)


def test_fast_equals_reference_float32(llama, requests_):
    fast, ref = _both(llama, requests_, "block", 2)
    _assert_same(fast, ref, rtol=2e-4)


def test_loss_layer_below_last(llama64, requests_):
    fast, ref = _both(llama64, requests_[:1], "block", 1, v_loss_layer=2)
    _assert_same(fast, ref, rtol=1e-9)


def test_early_stop_threshold_stops_after_first_forward(llama64, requests_):
    fast, ref = _both(llama64, requests_[:2], "block", 1, early_stop_loss=1e9)
    assert fast.steps == ref.steps == [0, 0]
    assert torch.equal(fast.delta, torch.zeros_like(fast.delta))


def test_clamp_bounds_delta(llama64, requests_):
    fast, _ = _both(llama64, requests_[:2], "block", 1, clamp_norm_factor=0.01, v_lr=5.0)
    bound = 0.01 * fast.v_init.norm(dim=1)
    assert (fast.delta.norm(dim=1) <= bound * (1 + 1e-9)).all()


# One-token targets predicted at the subject's own last token, where δ is added: on a tiny model
# with larger weights these stop within a few steps, while REQUESTS[:2] run all twelve.
QUICK = [EditRequest(prompt=p, subject=s, target_new=t, target_true="Y") for p, s, t in
         [("I met {}", "Alice Smith", " "), ("We saw {}", "Bob", "\n"), ("The city of {}", "Paris", "\t"),
          ("Songs by {}", "Carol Dee", " ")]]
STOP_RULES = {"loss": {"early_stop_loss": 1.0},
              "argmax": {"early_stop_on_argmax": True, "argmax_patience": 2, "argmax_margin": 1.0}}
STOP_CASES = [("llama", "block", 2, 1.0), ("llama", "mlp_out", (1, 2, 3), 0.5), ("gpt2", "block", 2, 0.5),
              ("gpt2", "mlp_out", (1, 2, 3), 0.5)]


@pytest.fixture(scope="module")
def peaked():
    made = {}

    def get(arch, dtype):
        if (arch, dtype) not in made:
            made[arch, dtype] = Tiny(arch, dtype=dtype, initializer_range=0.2)
        return made[arch, dtype]
    return get


@pytest.mark.parametrize("rule", STOP_RULES)
@pytest.mark.parametrize("arch,site,layer,lr", STOP_CASES)
def test_stopped_requests_leave_the_batch(peaked, arch, site, layer, lr, rule, monkeypatch):
    """Requests stopping at different steps: each forward replays only the rows of the requests
    still optimising, and every request's optimisation is the one it has alone."""
    batch_rows = []
    replay = SuffixReplay.run
    monkeypatch.setattr(SuffixReplay, "run", lambda self, h: batch_rows.append(len(h)) or replay(self, h))
    fast, ref = _both(peaked(arch, torch.float64), QUICK + REQUESTS[:2], site, layer, v_num_grad_steps=12,
                      v_lr=lr, **STOP_RULES[rule])
    assert len(set(fast.steps)) > 2 and fast.steps[-2:] == [11, 11], fast.steps
    per_request = batch_rows[0] // 6  # forward `it` runs the requests that stop at `it` or later
    assert batch_rows == [per_request * sum(s >= it for s in fast.steps) for it in range(12)]
    _assert_same(fast, ref, rtol=1e-9)


@pytest.mark.parametrize("arch,site,layer,lr", STOP_CASES)
def test_leaving_the_batch_changes_at_most_rounding_float32(peaked, arch, site, layer, lr):
    """Against the same fast path keeping every row to the end (the cost before requests left)."""
    t = peaked(arch, torch.float32)
    temps = _templates(t)
    for rule in STOP_RULES.values():
        kw = dict(layer=layer, site=site, cfg=ValueConfig(v_num_grad_steps=12, v_lr=lr, **rule))
        out, kept = (values._fast_target_values(t.model, t.spec, t.tokenizer, QUICK + REQUESTS[:2], temps,
                                                compact=c, **kw) for c in (True, False))
        assert out.steps == kept.steps and len(set(out.steps)) > 2
        for name in ("v_star", "v_init", "delta"):
            a, b = getattr(out, name), getattr(kept, name)
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max())), name
        for name in ("p_first", "p_last", "loss"):
            assert getattr(out, name) == pytest.approx(getattr(kept, name), rel=1e-5), name


def _linear_problem(seed=0, b=3, d=16, vocab=40):
    """A stand-in for a model: target log-probs are log_softmax(A_j (v + δ)) for two target
    positions per request, so the optimisation can make any target the argmax quickly."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, 2, vocab, d, generator=g)
    kl_a = torch.randn(vocab, d, generator=g)
    v = torch.randn(b, 1, d, generator=g)
    tok = torch.randint(vocab, (b * 2,), generator=g)
    req = torch.arange(b).repeat_interleave(2)
    p = values._Problem(batch=None, req_of_row=torch.arange(b), first_row=torch.arange(b), kl_row=torch.arange(b),
                        tgt_row=req, tgt_pos=torch.zeros(2 * b, dtype=torch.long), tgt_tok=tok, tgt_req=req,
                        tgt_w=torch.full((2 * b,), 0.5), tgt_row_w=torch.full((2 * b,), 0.5), n_req=b, n_rows=b)

    def forward(delta, req):
        h = v[req] + delta
        lp_t = torch.log_softmax(torch.einsum("bjvd,bd->bjv", a[req], h[:, 0]).reshape(2 * len(req), vocab), -1)
        return lp_t, torch.log_softmax(h[:, 0] @ kl_a.T, -1), v[req]

    def margins(delta):
        with torch.no_grad():
            lp = forward(delta, torch.arange(b))[0]
        return (lp.gather(1, tok[:, None])[:, 0] - lp.scatter(1, tok[:, None], float("-inf")).amax(-1)).view(b, 2)

    return p, forward, margins, d


@pytest.mark.parametrize("margin", [0.0, 1.0, 3.0])
def test_argmax_stop_holds_its_margin(margin):
    """Every request stopped by the argmax rule beats each rival token by more than the margin at
    both its target positions, with the δ it stopped at; the step before did not."""
    p, forward, margins, d = _linear_problem()
    cfg = ValueConfig(v_num_grad_steps=60, v_lr=0.2, early_stop_loss=0.0, early_stop_on_argmax=True,
                      argmax_margin=margin, clamp_norm_factor=100.0)
    res = values._optimise(forward, p, 1, d, "cpu", cfg, trace=True)
    assert all(0 < s < 59 for s in res.steps), res.steps
    for i, s in enumerate(res.steps):
        assert (margins(res.delta[:, None])[i] > margin).all()
        before = res.trajectory[i][s - 2] if s >= 2 else torch.zeros(d)
        assert not (margins(before.expand(p.n_req, 1, d))[i] > margin).all()


def test_a_larger_margin_never_stops_earlier():
    p, forward, _, d = _linear_problem(seed=1)
    steps = []
    for margin in (0.0, 0.5, 2.0, 4.0):
        cfg = ValueConfig(v_num_grad_steps=60, v_lr=0.2, early_stop_loss=0.0, early_stop_on_argmax=True,
                          argmax_margin=margin, clamp_norm_factor=100.0)
        steps.append(values._optimise(forward, p, 1, d, "cpu", cfg, trace=False).steps)
    assert all(all(x <= y for x, y in zip(a, b)) for a, b in zip(steps, steps[1:])), steps
    assert steps[0] != steps[-1]


def test_v_init_is_the_unedited_hidden_state(llama, requests_):
    temps = _templates(llama)
    cfg = ValueConfig(v_num_grad_steps=1)
    res = values.target_values(llama.model, llama.spec, llama.tokenizer, requests_[:1], temps,
                               layer=2, site="block", cfg=cfg)
    found = keys.compute_keys(llama.model, llama.spec, llama.tokenizer, requests_[:1], temps, [2], blocks=[2])
    assert torch.allclose(res.v_init, found[("bare_block", 2)], atol=1e-5)
    assert res.steps == [0] and torch.equal(res.v_star, res.v_init)


def test_bad_site_is_rejected(llama, requests_):
    with pytest.raises(ValueError, match="site"):
        values.target_values(llama.model, llama.spec, llama.tokenizer, requests_[:1], _templates(llama),
                             layer=1, site="attn", cfg=dataclasses.replace(ValueConfig(), v_num_grad_steps=1))


@pytest.mark.parametrize("arch", ["llama64", "gemma3_64"])
def test_several_mlp_out_sites_fast_equals_reference(arch, requests_, request):
    """One δ per request and layer (MEMIT's "mlp_out" targets): both paths agree step by step."""
    t = request.getfixturevalue(arch)
    fast, ref = _both(t, requests_[:2], "mlp_out", (1, 2, 3))
    assert fast.v_star.shape == (2, 3, t.spec.hidden_size)
    assert fast.trajectory[0][0].shape == (3, t.spec.hidden_size)
    _assert_same(fast, ref, rtol=1e-9)


def test_several_sites_targets_are_what_each_layer_must_output(gemma3_64, requests_):
    """v*[:, s] = layer s's MLP output on the bare prompt with the lower δ applied, plus its own δ;
    clamp and weight decay act per site."""
    t = gemma3_64
    layers = (1, 3)
    cfg = ValueConfig(v_num_grad_steps=4, clamp_norm_factor=0.05, v_lr=5.0)
    temps = _templates(t)
    res = values.target_values(t.model, t.spec, t.tokenizer, requests_[:2], temps, layer=layers,
                               site="mlp_out", cfg=cfg)
    assert (res.delta.norm(dim=-1) <= 0.05 * res.v_init.norm(dim=-1) * (1 + 1e-9)).all()
    assert not torch.equal(res.delta[:, 0], torch.zeros_like(res.delta[:, 0]))
    lower = {}

    def add_lower(module, args, out):
        rows = keys.template_rows(t.tokenizer, requests_[:2], temps)
        look = torch.tensor([r.lookup for r in rows])
        per_row = res.delta[:, 0].repeat_interleave(len(keys.flat(temps)), 0)
        lower["done"] = True
        return out.index_put((torch.arange(len(rows)), look), per_row.to(out.dtype), accumulate=True)

    with t.spec.mlp_out(t.model, layers[0]).register_forward_hook(add_lower):
        found = keys.compute_keys(t.model, t.spec, t.tokenizer, requests_[:2], temps, [], mlp_outs=[layers[1]])
    assert lower["done"]
    expect = found[("bare_mlp_out", layers[1])] + res.delta[:, 1]
    assert torch.allclose(res.v_star[:, 1], expect, rtol=1e-8, atol=1e-8 * float(expect.norm()))


def test_several_sites_need_mlp_out(llama, requests_):
    with pytest.raises(ValueError, match="several injection layers"):
        values.target_values(llama.model, llama.spec, llama.tokenizer, requests_[:1], _templates(llama),
                             layer=(1, 2), site="block", cfg=ValueConfig(v_num_grad_steps=1))


@pytest.mark.parametrize("fast", [True, False])
def test_no_injection_layer_is_a_clear_error(llama, requests_, fast):
    with pytest.raises(ValueError, match="no injection layer"):
        values.target_values(llama.model, llama.spec, llama.tokenizer, requests_[:1], _templates(llama),
                             layer=(), site="mlp_out", cfg=ValueConfig(v_num_grad_steps=1, fast=fast))


@pytest.mark.parametrize("arch,expect", [("llama64", True), ("gpt2_64", True), ("qwen2_64", True),
                                         ("gemma3_64", False)])
def test_mlp_out_is_residual_by_behaviour(arch, expect, request):
    """Gemma-3 normalises the MLP output before the residual add; the others add it as is."""
    t = request.getfixturevalue(arch)
    assert [keys.mlp_out_is_residual(t.model, t.spec, t.tokenizer, i) for i in range(t.spec.num_layers)] \
        == [expect] * t.spec.num_layers
