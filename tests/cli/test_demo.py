"""`seqedit demo --quick`: the README's first command, end to end on the packaged model."""
from __future__ import annotations

import json

import pytest

from seqedit.cli import main
from seqedit.session.reader import read_run


@pytest.mark.slow
def test_quick_demo_runs_both_configs_and_writes_the_comparison(tmp_path, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("SEQEDIT_PROGRESS", "lines")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name, guards in (("memit", []), ("memit+d4s", ["d4s"])):
        run = read_run(out / name / "session")
        assert [g["name"] for g in run.manifest["guards"]] == guards
        assert len(run.live_edit_ids) == 4
        assert {r["evaluator"] for r in run.evaluations} == {"editing", "health", "general"}
    report = json.loads((out / "report" / "report.json").read_text())
    assert [r["label"] for r in report["runs"]] == ["memit", "memit+d4s"]
    assert (out / "report" / "report.html").is_file()
    assert "Report: " in printed
    table = printed.split("After 4 edits (last checkpoint")[1].split("Report: ")[0].splitlines()
    assert table[1].split() == ["memit", "memit+d4s"]
    rows = {line[:30].strip(): line[30:].split() for line in table[2:] if line.strip()}
    assert rows["live edits"] == ["4", "4"]
    for row in ("eff. after each", "efficacy", "wikitext word perplexity", "σmax ΔW/W₀ (max layer)"):
        assert len(rows[row]) == 2 and all(float(v) > 0 for v in rows[row]), row
    # Again: both runs are complete, so nothing is edited; the report is rewritten.
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert len(read_run(out / "memit" / "session").edits) == 4
