"""export_peft: the live edits as a LoRA adapter that PEFT loads onto the base model."""
from __future__ import annotations

import json

import pytest
import torch
from session_helpers import FakeConfig, FakeEditor, make_requests

from seqedit import EditSession
from seqedit.models import spec as model_spec
from seqedit.models import tiny

peft = pytest.importorskip("peft")


def logits(model, tok):
    ids = tok(["The capital of Country 1 is Rome", "Hello there"], padding=True,
              return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_exact_export_matches_the_edited_model(arch, tmp_path):
    model, tok = tiny(arch, seed=0)
    spec = model_spec(model)
    with EditSession(model, tok, FakeEditor(spec, FakeConfig(layers=(0, 2)))) as session:
        session.edit(make_requests(4), progress=False)
        session.rollback(2)
        report = session.export_peft(tmp_path / "lora")
    assert report["exact"] and report["r"] == 3 and report["max_rel_fro_error"] < 1e-6
    assert report["fan_in_fan_out"] == spec.mlp_out_transposed
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == config["r"] == 3
    assert config["target_modules"] == sorted(
        spec.mlp_out_weight_name(i).removesuffix(".weight") for i in (0, 2))
    assert (tmp_path / "lora" / "README.md").exists()
    base, _ = tiny(arch, seed=0)
    adapted = peft.PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    torch.testing.assert_close(logits(adapted, tok), logits(model, tok), atol=1e-5, rtol=1e-5)


def test_truncated_export_reports_its_error(tmp_path):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    with EditSession(model, tok, FakeEditor(spec)) as session:
        session.edit(make_requests(3), batch_size=3, progress=False)
        session.edit(make_requests(2, start=3), progress=False)
        report = session.export_peft(tmp_path / "lora", rank=2)
    assert not report["exact"] and report["r"] == 2
    for module, info in report["layers"].items():
        dense = (model.get_parameter(module + ".weight").detach() - base[module + ".weight"]).double()
        s = torch.linalg.svdvals(dense)
        want = float((s[2:].square().sum() / s.square().sum()).sqrt())
        assert info["rank_accumulated"] == 5 and info["rank_kept"] == 2 and info["edits"] == 3
        assert info["rel_fro_error"] == pytest.approx(want, rel=1e-4)
    assert report["max_rel_fro_error"] == max(i["rel_fro_error"] for i in report["layers"].values())
    saved = json.loads((tmp_path / "lora" / "seqedit_export.json").read_text())
    assert saved["max_rel_fro_error"] == report["max_rel_fro_error"]
    assert "relative Frobenius error" in (tmp_path / "lora" / "README.md").read_text()
    adapted = peft.PeftModel.from_pretrained(tiny("llama", seed=0)[0], tmp_path / "lora")
    assert adapted is not None


def test_export_without_live_edits_is_an_error(tmp_path, llama, fake):
    model, tok = llama
    with EditSession(model, tok, fake) as session:
        session.edit(make_requests(1), progress=False)
        session.rollback(0)
        with pytest.raises(ValueError, match="no live edits"):
            session.export_peft(tmp_path / "lora")
        with pytest.raises(ValueError, match="rank must be a positive int"):
            session.export_peft(tmp_path / "lora", rank=0)
