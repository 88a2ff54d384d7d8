"""PRUNE through the session: post-hoc restrains only what evaluators measure, every-k writes
W₀ + F(ΔW) into the weights."""
from __future__ import annotations

import torch

from guard_helpers import FAST, requests, stats_options
from seqedit import EditSession, metrics
from seqedit.guards.prune import restraint
from seqedit.models import tiny


def run(tmp_path, name, guards):
    model, tok = tiny("llama", seed=0)
    health = metrics.create("health", after_each=False, condition=False)
    with EditSession(model, tok, "memit", layers=[0, 1], ledger_dir=tmp_path / name,
                     stats_options=stats_options(tmp_path),
                     guards=guards, evaluators=[health], **FAST) as s:
        s.edit(requests(4), progress=False)
        ratio = s.evaluations[-1].value("sigma_max_delta_ratio",
                                        weight="model.layers.0.mlp.down_proj.weight")
        base = {n: s._base[n].clone() for n in s._base.names}
        last = s._ledger.load_delta(s._ledger.live_entries()[-1])
        return model, ratio, base, last


def test_posthoc_restrains_only_the_measurement(tmp_path, one_thread):
    plain, plain_ratio, _, _ = run(tmp_path, "plain", None)
    viewed, viewed_ratio, _, _ = run(tmp_path, "posthoc", [{"name": "prune", "mode": "posthoc"}])
    for (n, a), b in zip(plain.named_parameters(), viewed.parameters()):
        assert torch.equal(a, b), n  # editing went on from W₀ + ΔW, untouched by the view
    assert plain_ratio > 1  # the tiny model's edits outgrow σ_max(W₀): there is work to do
    assert viewed_ratio < plain_ratio


def test_every_edit_writes_w0_plus_f_of_delta(tmp_path, one_thread):
    model, _, base, last = run(tmp_path, "every", [{"name": "prune", "mode": "every", "every": 1}])
    restrained = 0
    for layer in last.layers:
        w0 = base[layer.name].double()
        now = model.get_parameter(layer.name).detach().double() - w0
        u, v = layer.u.double(), layer.v.double()
        before = now - u @ v.T  # ΔW before the last step (the weights, less what it applied)
        sigma_bar = float(torch.linalg.matrix_norm(w0, ord=2))
        # the last step's own edit is its first column (one request); the rest is PRUNE's
        full = torch.cat([torch.eye(before.shape[0], dtype=torch.float64), u[:, :1]], 1)
        right = torch.cat([before.T, v[:, :1]], 1)
        cu, cv = restraint(full, right, sigma_bar, "log")
        restrained += cu.shape[1]
        expected = before + u[:, :1] @ v[:, :1].T + cu @ cv.T
        assert float((now - expected).norm()) <= 1e-5 * float(expected.norm())
    assert restrained > 0  # the test exercised the restraint
