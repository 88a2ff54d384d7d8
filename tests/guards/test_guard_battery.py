"""One battery over every built-in guard: through EditSession on a tiny model, edits, a rollback
and a resume on a fresh base model give bit-identical weights; a refused step moves nothing."""
from __future__ import annotations

import pytest
import torch

from guard_helpers import FAST, requests, stats_options
from seqedit import EditSession
from seqedit.data import EditRequest
from seqedit.models import tiny

PROBES = [EditRequest(prompt="{} was born in", subject=f"Person {i}", target_true="Paris",
                      target_new="Rome", case_id=f"p{i}") for i in range(24)]
GUARDS = {
    "d4s": [{"name": "d4s"}],
    "prune-every": [{"name": "prune", "mode": "every", "every": 2}],
    "prune-posthoc": [{"name": "prune", "mode": "posthoc"}],
    "sora": [{"name": "sora", "probes": PROBES, "n_probes": 24, "z_threshold": None,
              "top_q": 0.1, "max_outliers": 2, "layer": 1}],
    "d4s+prune": [{"name": "d4s"}, {"name": "prune", "mode": "every", "every": 1}],
}


@pytest.mark.parametrize("name", sorted(GUARDS))
def test_edit_rollback_resume_is_bit_exact(tmp_path, one_thread, name):
    model, tok = tiny("llama", seed=0)
    reqs = requests(4)
    # SORA's joint solve on a random tiny model's near-collinear keys can reach 10× ‖W₀‖_F.
    with EditSession(model, tok, "memit", layers=[0, 1], ledger_dir=tmp_path / "s",
                     stats_options=stats_options(tmp_path), guards=GUARDS[name], max_delta_ratio=100,
                     **FAST) as s:
        s.edit(reqs[:3], progress=False)
        s.rollback(1)
        s.edit(reqs[3:], progress=False)
        assert s.live_edits == [0, 2, 3]
        for line in s.records():
            if line["type"] == "edit":
                assert set(line["info"].get("guards", {})) <= {g["name"] for g in GUARDS[name]}
        edited = {n: p.detach().clone() for n, p in model.named_parameters()}
    base, _ = tiny("llama", seed=0)
    with EditSession.resume(tmp_path / "s", base, tok, stats_options=stats_options(tmp_path),
                            progress=False) as resumed:
        assert [g.name for g in resumed._guards] == [g["name"] for g in GUARDS[name]]
    for n, p in base.named_parameters():
        assert torch.equal(p.detach(), edited[n]), n


@pytest.mark.parametrize("name", sorted(GUARDS))
def test_a_refused_step_moves_nothing(tmp_path, one_thread, name):
    model, tok = tiny("llama", seed=0)
    with EditSession(model, tok, "memit", layers=[0, 1], stats_options=stats_options(tmp_path),
                     guards=GUARDS[name], max_delta_ratio=1e-12, **FAST) as s:
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        (result,) = s.edit(requests(1), progress=False)
        assert result.status == "refused" and "max_delta_ratio" in result.reason
        for n, p in model.named_parameters():
            assert torch.equal(p.detach(), before[n]), n
        assert s._accumulated.names == []
