"""1,000 sequential edits in one process: constant cost per edit, replayable ledger."""
from __future__ import annotations

import time

import pytest
from session_helpers import FakeEditor, assert_models_close, make_requests

from seqedit import EditSession
from seqedit.models import spec as model_spec
from seqedit.models import tiny


@pytest.mark.slow
def test_thousand_sequential_edits(tmp_path):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    reqs = make_requests(1000)
    with EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s") as session:
        laps = []
        for start in range(0, 1000, 200):
            t0 = time.perf_counter()
            session.edit(reqs[start:start + 200], progress=False, probe=False)
            laps.append(time.perf_counter() - t0)
        assert session.live_edits == list(range(1000))
        t0 = time.perf_counter()
        session.rollback(500)
        rollback_s = time.perf_counter() - t0
    # appending stays O(1): the last 200 edits cost about what the first 200 did
    assert laps[-1] < 2.5 * laps[0] + 1.0, laps
    assert rollback_s < laps[0] / 20, (rollback_s, laps)
    assert len((tmp_path / "s" / "ledger.jsonl").read_text().splitlines()) == 1001
    fresh, _ = tiny("llama", seed=0)
    with EditSession.resume(tmp_path / "s", fresh, tok, method=FakeEditor(spec),
                            progress=False) as resumed:
        assert len(resumed.live_edits) == 999
    assert_models_close(fresh, model, rtol=1e-5, atol=1e-5)  # 1,000 roundings
