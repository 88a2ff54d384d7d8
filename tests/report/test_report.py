"""seqedit.report on real tiny runs: the series read from the ledger, the figures and what each
drew, the Markdown and HTML files, compare, runs without evaluations, and errors."""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys

import pytest

from seqedit import report
from seqedit.report.pages import NO_EVALUATIONS, NO_FIGURES
from seqedit.report.series import EDIT_STAGES
from seqedit.session import read_run

PNG = b"\x89PNG\r\n\x1a\n"


def drawn(paths, figure):
    """{panel title: [(run, variant)]} of one figure of a write() result."""
    [fig] = [f for f in paths["figures"] if f["name"] == figure]
    return {p["title"]: [(ln["run"], ln["variant"]) for ln in p["lines"]] for p in fig["panels"]}


def test_series_follow_the_ledger(runs):
    summary = report.summarise(runs["memit"])
    run = read_run(runs["memit"])
    applied = [r for r in run.edits if r["status"] == "applied"]
    series = {s["key"]: s for s in summary["series"]}
    # x counts the requests live after each applied edit (2 per step here), not the steps.
    after_each = series["session/efficacy_after_each"]
    assert after_each["x"] == [2 * (i + 1) for i in range(len(applied))]
    successes = [p["success"] for r in applied for p in r["probabilities"]]
    assert after_each["value"][-1] == pytest.approx(sum(successes) / len(successes))
    assert summary["edits"]["applied"] == len(applied)
    assert summary["edits"]["refused"] == len(run.edits) - len(applied)
    # One after-all point per eval line of the evaluator, at its state, with its protocol.
    evals = [e for e in run.evaluations if e["evaluator"] == "editing"]
    efficacy = series["editing/efficacy/binary/after-all"]
    assert efficacy["state"] == [e["state"] for e in evals if e["result"]["metrics"]]
    assert efficacy["protocol"]["prompts"] == "edit"
    assert [c["state"] for c in summary["checkpoints"]] == sorted({e["state"] for e in evals})
    # Per-layer health after each edit, from the edit lines.
    assert len(series["health/l1_ratio/after-each/L1"]["x"]) == len(applied)
    json.dumps(summary, allow_nan=False)  # plain JSON, nothing non-finite


def test_seconds_per_edit_is_amortised_over_requests(runs):
    # The mean over requests, not the median step: D4S spends its time in the few steps that
    # optimise a batch of targets ahead (the demo's D4S run: median step 1.2 s, mean 7.0 s/edit).
    summary = report.summarise(runs["memit-b1"])
    run = read_run(runs["memit-b1"])
    per_step = [sum(r["timings"].get(k, 0.0) for k in EDIT_STAGES)
                for r in run.edits if r["status"] == "applied"]
    assert len(per_step) >= 3  # else median and mean coincide and this test could not tell
    assert statistics.median(per_step) != pytest.approx(statistics.fmean(per_step), rel=1e-3)
    last = summary["checkpoints"][-1]
    assert last["requests_applied"] == len(per_step)
    assert last["s_per_edit"] == pytest.approx(statistics.fmean(per_step), rel=1e-12)


def test_single_run_report(runs, tmp_path):
    paths = report.write([runs["memit"]], tmp_path / "out")
    for key in ("markdown", "html", "json"):
        assert paths[key].is_file() and paths[key].parent == tmp_path / "out"
    assert [p.name for p in paths["plots"]] == [f"{n}.png" for n in (
        "editing", "general", "perplexity", "health", "gora", "timing")]
    assert all(p.read_bytes().startswith(PNG) for p in paths["plots"])
    editing = drawn(paths, "editing")
    assert editing["efficacy — edit prompts"] == [("memit", v) for v in (
        "binary", "generation", "token", "right after each edit (cumulative)")]
    assert "margin" not in " ".join(editing)
    health = drawn(paths, "health")
    assert health["mean |W| / mean |W₀| — per layer, after each edit"] == [("memit", "L0"),
                                                                          ("memit", "L1")]
    assert list(drawn(paths, "general")) == ["sst2 acc (5 docs, 0-shot)"]  # modal_share is not
    md = paths["markdown"].read_text()
    assert "**model**: LlamaForCausalLM" in md and "**method**: memit" in md
    assert "**guards**: none" in md
    rows = [line for line in md.splitlines() if line.startswith("| memit |")]
    assert len(rows) == len(report.summarise(runs["memit"])["checkpoints"])
    assert "mean\\|W\\| ratio" in md  # the pipe is escaped, the table keeps its columns
    assert "- **efficacy**: editing `efficacy`: family=binary" in md
    saved = json.loads(paths["json"].read_text())
    assert saved["runs"][0]["label"] == "memit" and saved["figures"] == paths["figures"]


def test_html_is_self_contained(runs, tmp_path):
    paths = report.write([runs["memit"]], tmp_path)
    page = paths["html"].read_text()
    assert page.count('<img src="data:image/png;base64,') == len(paths["plots"])
    for external in ("http://", "https://", "<script", "<link", "src=\"/", "url("):
        assert external not in page
    assert "<table>" in page and "LlamaForCausalLM" in page


def test_compare_overlays_the_runs(runs, tmp_path):
    paths = report.write([runs["memit"], runs["memit-b1"]], tmp_path, labels=["A", "B"])
    for figure in paths["figures"]:
        for panel in figure["panels"]:
            assert {ln["run"] for ln in panel["lines"]} == {"A", "B"}, (figure["name"], panel)
    health = drawn(paths, "health")
    assert health["σ_max(ΔW) / σ_max(W₀) — max over 2 layers, after each edit"] == [
        ("A", "max over layers"), ("B", "max over layers")]
    md = paths["markdown"].read_text()
    assert md.startswith("# seqedit compare — A vs B")
    assert "### A" in md and "### B" in md
    assert {line.split(" | ")[0] for line in md.splitlines() if line[:4] in ("| A ", "| B ")} \
        == {"| A", "| B"}


def test_a_report_is_rewritten_from_its_json_without_the_ledgers(runs, tmp_path):
    copies = [shutil.copytree(runs[k], tmp_path / "runs" / k) for k in ("memit", "memit-b1")]
    first = report.write(copies, tmp_path / "a", labels=["A", "B"])
    earlier = json.loads(first["json"].read_text())["runs"]
    shutil.rmtree(tmp_path / "runs")  # the ledgers need not exist any more
    again = report.write_summaries(earlier, tmp_path / "b", title="T", note="Carried: A, B.")

    def body(path):
        return [ln for ln in path.read_text().splitlines()[1:] if not ln.startswith("Written by")]
    assert body(again["markdown"]) == body(first["markdown"])
    assert again["markdown"].read_text().startswith("# T")
    assert "Carried: A, B." in again["markdown"].read_text()
    assert [f["panels"] for f in again["figures"]] == [f["panels"] for f in first["figures"]]
    assert json.loads(again["json"].read_text())["runs"] == earlier
    with pytest.raises(ValueError, match="no runs"):
        report.write_summaries([], tmp_path / "c")


def test_labels_default_to_directory_names_and_stay_distinct(runs, tmp_path):
    other = tmp_path / "elsewhere" / "memit"
    shutil.copytree(runs["memit"], other)
    paths = report.write([runs["memit"], other], tmp_path / "out")
    labels = [r["label"] for r in json.loads(paths["json"].read_text())["runs"]]
    assert len(set(labels)) == 2 and labels[1] == "elsewhere/memit"
    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        report.write([runs["memit"], other], tmp_path / "out", labels=["x"])


def test_cli_run_directory_uses_its_session_folder(runs, tmp_path):
    summary = report.summarise(runs["cli"])
    assert summary["label"] == "cli-run"
    assert summary["session"] == str(runs["cli"] / "session")


def test_run_without_evaluations_says_so(runs, tmp_path):
    paths = report.write([runs["bare"]], tmp_path)
    md = paths["markdown"].read_text()
    assert NO_EVALUATIONS in md and "no evaluations recorded yet" in md
    # Edits alone still give the probe's efficacy right after each edit and the timings.
    assert [f["name"] for f in paths["figures"]] == ["editing", "timing"]
    assert NO_EVALUATIONS in paths["html"].read_text()


def test_empty_session_has_no_figures(tmp_path):
    from report_helpers import make_run

    run = make_run(tmp_path / "empty", steps=0, with_evaluators=False)
    paths = report.write(run, tmp_path / "out")
    assert paths["plots"] == []
    assert NO_FIGURES in paths["html"].read_text() and NO_FIGURES in paths["markdown"].read_text()


def test_a_figure_the_runs_no_longer_have_is_removed(runs, tmp_path):
    report.write([runs["memit"]], tmp_path)
    assert (tmp_path / "gora.png").exists()
    report.write([runs["bare"]], tmp_path)
    assert not (tmp_path / "gora.png").exists() and (tmp_path / "editing.png").exists()


def test_a_run_being_written_reads_to_its_last_committed_line(runs, tmp_path):
    copy = tmp_path / "live"
    shutil.copytree(runs["memit"], copy)
    before = report.summarise(copy)
    with open(copy / "ledger.jsonl", "ab") as f:
        f.write(b'{"type": "eval", "step": 9, "resu')  # the writer's line in progress
    after = report.summarise(copy)
    assert after["series"] == before["series"] and after["checkpoints"] == before["checkpoints"]


def test_bad_directories_are_named(tmp_path):
    with pytest.raises(report.ReportError, match=f"{tmp_path / 'missing'}: no such directory"):
        report.write([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "plain").mkdir()
    with pytest.raises(report.ReportError, match="plain: not a seqedit session directory"):
        report.summarise(tmp_path / "plain")
    with pytest.raises(ValueError, match="no runs"):
        report.write([], tmp_path / "out")


def test_damaged_ledger_is_an_error_naming_the_run(runs, tmp_path):
    copy = tmp_path / "damaged"
    shutil.copytree(runs["bare"], copy)
    lines = (copy / "ledger.jsonl").read_bytes().split(b"\n")
    lines[0] = lines[0].replace(b'"edit_id": 0', b'"edit_id": 7')
    (copy / "ledger.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(report.ReportError, match="damaged"):
        report.summarise(copy)


def test_import_needs_no_matplotlib():
    code = ("import sys, seqedit, seqedit.report; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
