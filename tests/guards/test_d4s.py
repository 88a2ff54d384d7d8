"""D4S: sequential edits are one cumulative batch solve against W₀, exact under rollback and resume."""
from __future__ import annotations

import pytest
import torch

from guard_helpers import FAST, requests, stats_options
from seqedit import EditSession
from seqedit.guards import GuardError
from seqedit.models import tiny
from seqedit.session.ledger import Ledger, LedgerError

LAYERS = [0, 1]


def session(tmp_path, model, tok, name="s", **guard):
    return EditSession(model, tok, "memit", layers=LAYERS, ledger_dir=tmp_path / name,
                       stats_options=stats_options(tmp_path), guards=[{"name": "d4s", **guard}], **FAST)


def batch_solution(s: EditSession, skip=()):
    """Δ = (Σ R Kᵀ)(λC + Σ K Kᵀ)⁻¹ per weight in float64 from every live edit's K and R."""
    ledger: Ledger = s._ledger
    lam = s._editor.config.mom2_update_weight
    out = {}
    for layer in LAYERS:
        name = s.spec.mlp_out_weight_name(layer)
        ks, rs = [], []
        for entry in ledger.live_entries():
            if entry.edit_id in skip:
                continue
            state = ledger.load_delta(entry).state
            ks.append(state[f"d4s.{name}.k"].double())
            rs.append(state[f"d4s.{name}.r"].double())
        k, r = torch.cat(ks, 1), torch.cat(rs, 1)
        a = lam * s._moments(layer).double() + k @ k.T
        out[name] = torch.linalg.solve(a, r @ k.T, left=False)
    return out


def stored_change(s: EditSession, name):
    return s.model.get_parameter(name).detach().double() - s._base[name].double()


def test_sequential_d4s_equals_one_batch_solve(tmp_path, one_thread):
    model, tok = tiny("llama", seed=0)
    with session(tmp_path, model, tok) as s:
        s.edit(requests(2), progress=False)
        sizes = {n: {k: t.shape for k, t in v.items()} for n, v in s._guards[0].state().items()}
        s.edit(requests(5)[2:], batch_size=2, progress=False)
        assert [e.status for e in s._ledger.entries.values()] == ["applied"] * 4
        state = s._guards[0].state()
        assert {n: {k: t.shape for k, t in v.items()} for n, v in state.items()} == sizes  # O(1)
        for name, delta in batch_solution(s).items():
            scale = float(delta.norm())
            assert scale > 0
            assert float((state[name]["delta"] - delta).norm()) <= 1e-9 * scale
            # the weights carry it, rounded into float32 once per step
            assert float((stored_change(s, name) - delta).norm()) <= 1e-5 * scale


def test_rollback_resolves_without_the_edit_and_resume_is_bit_exact(tmp_path, one_thread):
    model, tok = tiny("llama", seed=0)
    reqs = requests(3)
    s = session(tmp_path, model, tok)
    s.edit(reqs, progress=False)
    s.rollback(1)
    state = s._guards[0].state()
    for name, delta in batch_solution(s).items():
        assert float((state[name]["delta"] - delta).norm()) <= 1e-9 * float(delta.norm())
        assert float((stored_change(s, name) - delta).norm()) <= 1e-5 * float(delta.norm())
    assert (tmp_path / "s" / "deltas" / "000001.rollback.safetensors").is_file()
    edited = {n: p.detach().clone() for n, p in model.named_parameters()}
    s.close()
    base, _ = tiny("llama", seed=0)
    with EditSession.resume(tmp_path / "s", base, tok, stats_options=stats_options(tmp_path),
                            progress=False) as resumed:
        assert resumed._guards[0].name == "d4s" and resumed.live_edits == [0, 2]
        for name, held in resumed._guards[0].state().items():
            for key, t in held.items():
                assert torch.equal(t, state[name][key]), (name, key)
    for n, p in base.named_parameters():
        assert torch.equal(p.detach(), edited[n]), n


def test_targets_optimised_ahead_match_one_at_a_time(tmp_path, one_thread):
    reqs = requests(3)
    runs = {}
    for batch in (1, 3):
        model, tok = tiny("llama", seed=0)
        with session(tmp_path, model, tok, name=f"b{batch}", target_batch=batch) as s:
            s.edit(reqs, progress=False)
            runs[batch] = {n: v["delta"] for n, v in s._guards[0].state().items()}
    for name, delta in runs[1].items():
        # one padded batch instead of three: the same optimisation up to float32 rounding
        assert float((runs[3][name] - delta).norm()) <= 1e-3 * float(delta.norm())


def test_recompute_residual_is_an_option(tmp_path, one_thread):
    model, tok = tiny("llama", seed=0)
    with session(tmp_path, model, tok, recompute_residual=True) as s:
        (result,) = s.edit(requests(1), progress=False)
        assert result.status == "applied"
        assert s._ledger.manifest["guards"] == [
            {"name": "d4s", "config": {"recompute_residual": True, "target_batch": 16}}]


def test_d4s_needs_memits_key_residual_form(tmp_path):
    model, tok = tiny("llama", seed=0)
    with pytest.raises(GuardError, match="MEMIT's key/residual form"):
        EditSession(model, tok, "alphaedit", layers=LAYERS, ledger_dir=tmp_path / "a",
                    guards=["d4s"])
    assert not (tmp_path / "a").exists()
    with pytest.raises(GuardError, match="does not apply the editor's nas_anchor"):
        EditSession(model, tok, "memit", layers=LAYERS, nas_anchor=(3.0,), guards=["d4s"])
    with pytest.raises(GuardError, match="target_batch"):
        EditSession(model, tok, "memit", layers=LAYERS, guards=[{"name": "d4s", "target_batch": 0}])


def test_resume_refuses_other_guards(tmp_path, one_thread):
    model, tok = tiny("llama", seed=0)
    with session(tmp_path, model, tok) as s:
        s.edit(requests(1), progress=False)
    base, _ = tiny("llama", seed=0)
    with pytest.raises(GuardError, match="would mix two experiments"):
        EditSession.resume(tmp_path / "s", base, tok, stats_options=stats_options(tmp_path),
                           guards=[{"name": "d4s", "recompute_residual": True}])


def test_a_crash_inside_a_guarded_rollback_leaves_only_a_removable_file(tmp_path, one_thread):
    model, tok = tiny("llama", seed=0)
    with session(tmp_path, model, tok) as s:
        s.edit(requests(2), progress=False)
    deltas = tmp_path / "s" / "deltas"
    # what a kill between writing the rollback's correction and its ledger line leaves
    (deltas / "000001.rollback.safetensors").write_bytes((deltas / "000001.safetensors").read_bytes())
    base, _ = tiny("llama", seed=0)
    with EditSession.resume(tmp_path / "s", base, tok, stats_options=stats_options(tmp_path),
                            progress=False) as resumed:
        assert resumed.live_edits == [0, 1]
    assert not (deltas / "000001.rollback.safetensors").exists()
    # a correction for an edit that is not live cannot come from a crash: nothing is touched
    (deltas / "000007.rollback.safetensors").write_bytes(b"stray")
    base, _ = tiny("llama", seed=0)
    with pytest.raises(LedgerError, match="no ledger line names"):
        EditSession.resume(tmp_path / "s", base, tok, stats_options=stats_options(tmp_path))
    assert (deltas / "000007.rollback.safetensors").read_bytes() == b"stray"
