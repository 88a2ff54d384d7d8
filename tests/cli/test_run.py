"""`seqedit run` end to end on a tiny model: a run, its continuation, status, export, eval,
and a run killed with SIGKILL that resumes to the same ledger and bit-identical weights."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seqedit import models
from seqedit.cli import main
from seqedit.session import EditSession
from seqedit.session.reader import read_run


def _edits(run_dir: Path) -> list[dict]:
    return read_run(run_dir / "session").edits


def test_run_continue_status_export_eval(write_config, tmp_path, capfd):
    capsys = capfd
    path = write_config()
    assert main(["run", str(path)]) == 0
    out = tmp_path / "out"
    assert (out / "run.yaml").is_file() and (out / "session" / "manifest.json").is_file()
    assert [e["edit_id"] for e in _edits(out)] == [0, 1, 2]
    err = capfd.readouterr().err
    assert "memit: 3 edit to do" in err and "memit: 3/3 edit (100%)" in err
    assert "step 2: evaluating editing" in err

    assert main(["run", str(path)]) == 0  # the same config again: nothing to do
    assert len(_edits(out)) == 3
    assert main(["run", str(path), "--set", "data.edits=5"]) == 0  # a longer run continues
    assert [e["edit_id"] for e in _edits(out)] == [0, 1, 2, 3, 4]
    assert main(["run", str(path), "--set", "method_options.v_lr=0.1"]) == 2
    assert "method_options: this run directory" in capsys.readouterr().err

    capsys.readouterr()
    assert main(["status", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["requests_done"] == 5 and info["live_edits"] == 5 and info["method"] == "memit"
    assert info["evaluations"] == 2 * 5  # editing + health at 0, 2, 3 (end of the first run), 4, 5
    assert main(["status", str(out)]) == 0
    assert "5/5 requests in 5 step(s)" in capsys.readouterr().out

    assert main(["export", str(out), "--peft", str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert main(["eval", str(out), "--evaluators", "health"]) == 0
    assert "health (step 5, 5 live edits" in capsys.readouterr().out

    assert main(["report", str(out)]) == 0
    assert (out / "report" / "report.html").is_file() and list((out / "report").glob("*.png"))
    assert main(["compare", str(out), str(out / "session")]) == 2  # compare needs --out
    assert main(["compare", str(out), str(out), "--out", str(tmp_path / "cmp"),
                 "--labels", "a,b"]) == 0
    summary = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["a", "b"]


def test_eval_of_an_unedited_model(model_dir, write_config, capsys):
    write_config()  # sets the cache and progress variables
    assert main(["eval", "--model", str(model_dir / "tiny"), "--evaluators", "editing"]) == 0
    assert "editing (step 0, 0 live edits" in capsys.readouterr().out
    assert main(["eval"]) == 2
    assert "give a RUN_DIR or --model NAME" in capsys.readouterr().err


def test_run_commands_refuse_what_is_not_a_run(tmp_path, write_config, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "holds no seqedit run" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["run", str(write_config())]) == 2
    assert "exists and does not hold a seqedit run" in capsys.readouterr().err
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def _tensor_digest(path: Path) -> list:
    tensors = load_file(path)
    return [(k, hashlib.sha256(tensors[k].numpy().tobytes()).hexdigest()) for k in sorted(tensors)]


def _digest(run_dir: Path) -> list:
    """What a run is, without wall-clock fields: per edit its requests, status and delta bytes;
    per evaluation its step, evaluator and values."""
    run = read_run(run_dir / "session")
    out = []
    for rec in run.records:
        if rec["type"] == "edit":
            files = sorted((run_dir / "session" / "deltas").glob(f"{rec['edit_id']:06d}.*"))
            # Tensors, not file bytes: safetensors orders the metadata keys differently in
            # every process.
            out.append(("edit", rec["edit_id"], rec["status"], rec["request_keys"],
                        [_tensor_digest(f) for f in files]))
        elif rec["type"] == "eval":
            out.append(("eval", rec["step"], rec["evaluator"],
                        [m["name"] for m in rec["result"]["metrics"]],
                        [m["value"] for m in rec["result"]["metrics"]]))
    return out


def _weights(run_dir: Path, model_dir: Path) -> dict[str, torch.Tensor]:
    model, tok = models.load(model_dir / "tiny")
    with EditSession.resume(run_dir / "session", model, tok, progress=False):
        return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_sigkill_mid_run_resumes_to_the_same_run(write_config, tmp_path, model_dir):
    edits = 6
    whole = write_config("whole.yaml", output="whole", data={"edits": edits})
    killed = write_config("killed.yaml", output="killed", data={"edits": edits})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "seqedit", "run"]
    done = subprocess.run([*cmd, str(whole)], env=env, check=True, capture_output=True, text=True)
    # stderr is a pipe here: progress comes as plain lines, with no bar's carriage returns
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    assert f"memit: {edits}/{edits} edit (100%)" in done.stderr

    proc = subprocess.Popen([*cmd, str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ledger = tmp_path / "killed" / "session" / "ledger.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists() and ledger.read_text().count('"type": "edit"') >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_edits(tmp_path / "killed")) < edits
    subprocess.run([*cmd, str(killed)], env=env, check=True, capture_output=True)

    resumed, whole = _digest(tmp_path / "killed"), _digest(tmp_path / "whole")
    assert resumed == whole  # the same edits and measurements, bit for bit
    a, b = _weights(tmp_path / "killed", model_dir), _weights(tmp_path / "whole", model_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
