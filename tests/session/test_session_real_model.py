"""End to end on the packaged SmolLM2 (slow) and on a CUDA device (when there is one)."""
from __future__ import annotations

import pytest
import torch
from session_helpers import FakeEditor, assert_models_close, make_requests

from seqedit import EditSession
from seqedit.data import EditRequest
from seqedit.models import spec as model_spec
from seqedit.models import tiny

FACTS = [
    EditRequest(prompt="The Eiffel Tower is located in the city of", subject="The Eiffel Tower",
                target_new="Rome", target_true="Paris", case_id="eiffel"),
    EditRequest(prompt="The mother tongue of {} is", subject="Danielle Darrieux",
                target_new="English", target_true="French", case_id="darrieux"),
    EditRequest(prompt="{} plays the sport of", subject="Michael Jordan",
                target_new="soccer", target_true="basketball", case_id="jordan"),
]


def load_smollm2():
    from seqedit.models import load

    try:
        return load("smollm2-135m")
    except FileNotFoundError as err:  # ModelUnavailableError: the package is not installed
        pytest.skip(f"packaged SmolLM2 not installed: {err}")


@pytest.mark.slow
def test_memit_on_smollm2_edit_rollback_export(tmp_path):
    peft = pytest.importorskip("peft")
    model, tok = load_smollm2()
    stats = {"max_tokens": 5_000, "cache_dir": tmp_path / "stats", "progress": False}
    with EditSession(model, tok, "memit", ledger_dir=tmp_path / "s", stats_options=stats) as session:
        results = session.edit(FACTS, progress=False)
        assert all(r.status == "applied" for r in results)
        assert sum(r.success for r in results) >= 2, [(r.pre, r.post) for r in results]
        session.rollback(1)
        report = session.export_peft(tmp_path / "lora")
    assert report["exact"] and report["r"] == 2
    base, _ = load_smollm2()
    adapted = peft.PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    ids = tok([f.filled_prompt for f in FACTS], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(adapted(**ids).logits, model(**ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_session_on_cuda_resumes_on_cuda(tmp_path):
    model, tok = tiny("llama", seed=0)
    model = model.cuda()
    spec = model_spec(model)
    with EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s") as session:
        results = session.edit(make_requests(4), batch_size=2, progress=False)
        assert all(r.status == "applied" and r.post is not None for r in results)
        session.rollback(0)
    base = tiny("llama", seed=0)[0].cuda()
    with EditSession.resume(tmp_path / "s", base, tok, method=FakeEditor(spec),
                            progress=False) as resumed:
        assert resumed.live_edits == [1]
    assert_models_close(base, model)
    assert next(base.parameters()).is_cuda
