"""Small real runs for the report tests: MEMIT on a tiny random llama, with the editing and
health evaluators and a scripted stand-in for the lm-eval and GORA evaluators (same protocol
fields as theirs, without the harness)."""
from __future__ import annotations

import pytest
from report_helpers import make_run


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Two evaluated runs (plain and with a different batch size), one without evaluators and a
    CLI-style run directory holding its session in `session/`. Built once: they are only read."""
    root = tmp_path_factory.mktemp("runs")
    return {"memit": make_run(root / "memit"),
            "memit-b1": make_run(root / "memit-b1", steps=3, batch=1),
            "bare": make_run(root / "bare", steps=2, with_evaluators=False),
            "cli": make_run(root / "cli-run" / "session", steps=1).parent}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
