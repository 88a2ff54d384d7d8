"""SORA (experimental): re-solving an edit with preservation targets for its GORA outliers."""
from __future__ import annotations

import pytest

from guard_helpers import FAST, stats_options
from seqedit import EditSession
from seqedit.data import EditRequest
from seqedit.guards import GuardError
from seqedit.models import tiny

NAMES = ["Anna", "Boris", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun",
         "Kofi", "Lena", "Mira", "Nils", "Omar", "Pia", "Quin", "Rosa", "Sami", "Tara"]
PROBES = [EditRequest(prompt="{} was born in", subject=f"{n} {m}", target_true="Paris",
                      target_new="Rome", case_id=f"p{i}")
          for i, (n, m) in enumerate((n, m) for n in NAMES[:6] for m in NAMES[6:12])]


def test_sora_shrinks_the_outliers_drift_and_keeps_the_edit(tmp_path, one_thread):
    model, tok = tiny("llama", seed=0)
    guard = {"name": "sora", "probes": PROBES, "n_probes": len(PROBES), "z_threshold": None,
             "top_q": 0.1, "max_outliers": 3, "layer": 1}
    edit = EditRequest(prompt="The capital of {} is", subject="Country 0", target_new="Paris",
                       target_true="Rome", case_id=0)
    with EditSession(model, tok, "memit", layers=[0, 1], stats_options=stats_options(tmp_path),
                     guards=[guard], **FAST) as s:
        (result,) = s.edit([edit], progress=False)
        assert result.status == "applied"
        info = next(s.records())["info"]["guards"]["sora"]
    assert info["re_solved"] and len(info["outliers"]) == 3
    # a tiny random model's keys are close to collinear, so the drift shrinks by a quarter here
    assert info["outlier_change_sora"] < 0.9 * info["outlier_change_proposed"]
    assert result.post["new"] > result.pre["new"]


def test_sora_with_inline_probes_resumes(tmp_path, one_thread):
    """The manifest holds the probes as JSON; resume rebuilds the same guard from it."""
    model, tok = tiny("llama", seed=0)
    guard = {"name": "sora", "probes": PROBES, "n_probes": len(PROBES), "z_threshold": None,
             "top_q": 0.1, "max_outliers": 3, "layer": 1}
    edits = [EditRequest(prompt="The capital of {} is", subject=f"Country {i}",
                         target_new=city, target_true="Rome", case_id=i)
             for i, city in enumerate(("Paris", "Berlin"))]
    with EditSession(model, tok, "memit", layers=[0, 1], stats_options=stats_options(tmp_path),
                     ledger_dir=tmp_path / "s", guards=[guard], **FAST) as s:
        s.edit(edits[:1], progress=False)
        config = s._guards[0].config
    base, _ = tiny("llama", seed=0)
    with EditSession.resume(tmp_path / "s", base, tok, stats_options=stats_options(tmp_path),
                            progress=False) as resumed:
        assert resumed._guards[0].config == config
        (result,) = resumed.edit(edits[1:], progress=False)
        info = list(resumed.records())[-1]["info"]["guards"]["sora"]
    assert result.status == "applied" and info["re_solved"], result.reason


def test_sora_needs_memit(tmp_path):
    model, tok = tiny("llama", seed=0)
    with pytest.raises(GuardError, match="MEMIT's key/residual form"):
        EditSession(model, tok, "rome", layer=1, guards=[{"name": "sora", "probes": PROBES}])
    with pytest.raises(GuardError, match="does not apply the editor's update_norm_weight"):
        EditSession(model, tok, "memit", layers=[0, 1], update_norm_weight=1.0,
                    guards=[{"name": "sora", "probes": PROBES}])
    with pytest.raises(GuardError, match="max_outliers"):
        EditSession(model, tok, "memit", layers=[0, 1],
                    guards=[{"name": "sora", "probes": PROBES, "max_outliers": 0}])


def test_sora_options_are_goras_plus_its_cap():
    from dataclasses import fields

    from seqedit.guards.sora import SoraConfig, SoraGuard
    from seqedit.metrics.gora import GoraConfig

    assert {f.name for f in fields(SoraConfig)} == {f.name for f in fields(GoraConfig)}
    cfg = SoraConfig.from_dict({"n_probes": 50, "top_q": 0.1, "z_threshold": None})
    assert SoraConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.max_outliers, cfg.answers, cfg.site) == (8, False, GoraConfig.site)
    for bad, match in (({"answers": True}, "sora: answers"), ({"n_probes": 0}, "sora: gora: n_probes"),
                       ({"radius": 1}, "sora has no option"), ({"max_outliers": 1.5}, "max_outliers")):
        with pytest.raises(GuardError, match=match):
            SoraGuard(probes=PROBES, **bad)


@pytest.mark.slow
def test_sora_on_smollm2_lowers_the_ripple_and_keeps_the_edit(tmp_path):
    from seqedit.models import load

    try:
        model, tok = load("smollm2-135m")
    except FileNotFoundError as err:
        pytest.skip(f"packaged SmolLM2 not installed: {err}")
    stats = {"max_tokens": 5_000, "cache_dir": tmp_path / "stats", "progress": False}
    edit = EditRequest(prompt="The mother tongue of {} is", subject="Danielle Darrieux",
                       target_new="English", target_true="French", case_id="darrieux")
    guard = {"name": "sora", "n_probes": 100, "max_outliers": 8}
    with EditSession(model, tok, "memit", stats_options=stats, guards=[guard]) as s:
        (result,) = s.edit([edit], progress=False)
        info = next(s.records())["info"]["guards"]["sora"]
    assert result.status == "applied" and result.success, (result.pre, result.post)
    assert info["re_solved"], info
    assert info["outlier_change_sora"] < info["outlier_change_proposed"], info
    assert info["change_mean_sora"] < info["change_mean_proposed"], info
