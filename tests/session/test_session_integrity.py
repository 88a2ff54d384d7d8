"""The ledger cannot lie: no non-finite or runaway weight is written, solver failures are recorded
refusals, reopening deletes nothing committed, tampering is detected, creation is exclusive, and
replay rebuilds the live weights bit for bit."""
from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from session_helpers import FakeEditor, make_requests, model_hash

from seqedit import EditSession
from seqedit.editors.base import Delta, LayerDelta, SolveError
from seqedit.models import spec as model_spec
from seqedit.models import tiny
from seqedit.session import EditRefused, LedgerError
from seqedit.session.integrity import chain_root, seal_line, seal_manifest


@dataclass(frozen=True)
class FixedConfig:
    layer: int = 1


class FixedEditor:
    """Returns the factors it is given (or raises the SolveError it is given)."""

    name = "fixed"

    def __init__(self, spec, u=None, v=None, error=None):
        self.spec, self.u, self.v, self.error = spec, u, v, error
        self.config = FixedConfig()
        self.layers = [self.config.layer]

    def compute(self, model, requests, ctx):
        if self.error:
            raise SolveError(self.error)
        name = self.spec.mlp_out_weight_name(self.config.layer)
        return Delta(self.name, [LayerDelta(name, self.u, self.v, self.spec.mlp_out_transposed)])

    def commit(self, delta):
        pass

    def revert(self, delta):
        pass


def weight_shape(model, spec, layer=1):
    shape = tuple(model.get_parameter(spec.mlp_out_weight_name(layer)).shape)
    return shape[::-1] if spec.mlp_out_transposed else shape


def refused(model, tok, editor, **options):
    before = model_hash(model)
    with EditSession(model, tok, editor, **options) as session:
        result = session.edit(make_requests(1), progress=False)[0]
        line = [r for r in session.records() if r["type"] == "edit"][0]
    assert result.status == "refused" and line["status"] == "refused"
    assert model_hash(model) == before  # bit-identical
    return result.reason


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_finite_factors_whose_sum_overflows_are_refused(arch):
    model, tok = tiny(arch, seed=0)
    spec = model_spec(model)
    d_out, d_in = weight_shape(model, spec)
    u = torch.zeros(d_out, 2)
    v = torch.zeros(d_in, 2)
    u[3, 0], v[5, 0] = 1e20, 1e20  # finite factors, ΔW entry 1e40 > float32's 3.4e38
    u[:, 1], v[:, 1] = torch.randn(d_out), torch.randn(d_in)
    reason = refused(model, tok, FixedEditor(spec, u, v))
    assert "overflow float32" in reason


def test_fp16_model_refuses_an_update_beyond_65504():
    model, tok = tiny("llama", seed=0)
    model = model.half()
    spec = model_spec(model)
    d_out, d_in = weight_shape(model, spec)
    u, v = torch.zeros(d_out, 1), torch.zeros(d_in, 1)
    u[0, 0], v[1, 0] = 300.0, 300.0  # 9e4: finite in float32, not in float16
    reason = refused(model, tok, FixedEditor(spec, u, v), max_delta_ratio=float("inf"))
    assert "overflow float16" in reason


def test_a_runaway_delta_is_refused_by_the_magnitude_guard():
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    d_out, d_in = weight_shape(model, spec)
    gen = torch.Generator().manual_seed(1)
    u, v = torch.randn(d_out, 3, generator=gen), torch.randn(d_in, 3, generator=gen)
    reason = refused(model, tok, FixedEditor(spec, u, v))
    assert "max_delta_ratio = 10" in reason and "‖W₀‖_F" in reason
    with EditSession(model, tok, FixedEditor(spec, u, v), max_delta_ratio=1e6) as session:
        assert session.edit(make_requests(1), progress=False)[0].status == "applied"


def test_a_solve_error_is_a_recorded_refusal_and_strict_raises():
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    reason = refused(model, tok, FixedEditor(spec, error="C of layer 1 is singular"))
    assert reason == "the editor could not solve this edit: C of layer 1 is singular"
    with EditSession(model, tok, FixedEditor(spec, error="singular")) as session:
        with pytest.raises(EditRefused):
            session.edit(make_requests(1), progress=False, strict=True)
        assert [r["status"] for r in session.records()] == ["refused"]


@pytest.mark.parametrize(("options", "named"), [
    ({"seed": "abc"}, "seed"), ({"seed": True}, "seed"), ({"max_delta_ratio": float("nan")},
                                                          "max_delta_ratio"),
    ({"max_delta_ratio": 0}, "max_delta_ratio"), ({"method": None}, "method"),
    ({"method": object()}, "method")])
def test_bad_session_options_are_refused_before_anything_is_written(tmp_path, options, named):
    model, tok = tiny("llama", seed=0)
    options = {"method": FakeEditor(model_spec(model)), **options}
    method = options.pop("method")
    with pytest.raises((ValueError, TypeError), match=named):
        EditSession(model, tok, method, ledger_dir=tmp_path / "s", **options)
    assert not (tmp_path / "s").exists()


def test_one_live_session_per_model_object(tmp_path):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    first = EditSession(model, tok, FakeEditor(spec))
    with pytest.raises(RuntimeError, match="already being edited"):
        EditSession(model, tok, FakeEditor(spec))
    first.close()
    with EditSession(model, tok, FakeEditor(spec)) as again:
        assert again.edit(make_requests(1), progress=False)[0].status == "applied"


# -- reopening and integrity -----------------------------------------------------------------

@pytest.fixture
def run(tmp_path):
    """A closed run: edits 0..3, edit 1 rolled back, then edit 4 (the model it left is returned)."""
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    with EditSession(model, tok, FakeEditor(spec), ledger_dir=tmp_path / "s") as session:
        session.edit(make_requests(4), progress=False)
        session.rollback(1)
        session.edit(make_requests(1, start=4), progress=False)
    return tmp_path / "s", model_hash(model)


def resume(directory):
    model, tok = tiny("llama", seed=0)
    return EditSession.resume(directory, model, tok, method=FakeEditor(model_spec(model)),
                              progress=False), model


def listing(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


def test_replay_rebuilds_the_live_weights_bit_for_bit(run, one_thread):
    directory, live = run
    session, model = resume(directory)
    with session:
        assert session.live_edits == [0, 2, 3, 4]
        assert model_hash(model) == live


def test_the_next_edits_orphan_delta_is_the_only_file_removed(run, caplog):
    directory, _ = run
    orphan = directory / "deltas" / "000005.safetensors"
    orphan.write_bytes((directory / "deltas" / "000004.safetensors").read_bytes())
    session, _ = resume(directory)
    session.close()
    assert not orphan.exists() and "never written" in caplog.text


@pytest.mark.parametrize("damage", ["stray delta", "emptied ledger", "cut ledger",
                                    "missing delta"])
def test_reopening_refuses_and_deletes_nothing(run, damage):
    directory, _ = run
    ledger = directory / "ledger.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    if damage == "stray delta":
        (directory / "deltas" / "000042.safetensors").write_bytes(b"x")
    elif damage == "emptied ledger":
        ledger.write_bytes(b"")
    elif damage == "cut ledger":
        ledger.write_bytes(b"".join(lines[:2]))  # at a line boundary: 3 deltas unnamed now
    else:
        (directory / "deltas" / "000002.safetensors").unlink()
    before = listing(directory)
    with pytest.raises(LedgerError, match="nothing was|Nothing was"):
        resume(directory)
    assert listing(directory) == before


@pytest.mark.parametrize("tamper", ["flip status", "swap lines", "drop middle line",
                                    "edit a number", "splice a line from another run"])
def test_tampered_lines_are_detected(run, tamper, tmp_path):
    directory, _ = run
    ledger = directory / "ledger.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    records = [json.loads(x) for x in lines]
    if tamper == "flip status":
        lines[2] = (json.dumps({**records[2], "status": "refused"}) + "\n").encode()
    elif tamper == "swap lines":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "drop middle line":
        del lines[3]
    elif tamper == "edit a number":
        records[0]["timings"]["total_s"] += 1.0
        lines[0] = (json.dumps(records[0]) + "\n").encode()
    else:
        model, tok = tiny("llama", seed=0)
        with EditSession(model, tok, FakeEditor(model_spec(model)),
                         ledger_dir=tmp_path / "other") as other:
            other.edit(make_requests(1, start=20), progress=False)
        lines[0] = (tmp_path / "other" / "ledger.jsonl").read_bytes()
    ledger.write_bytes(b"".join(lines))
    before = listing(directory)
    with pytest.raises(LedgerError, match="chain checksum|nothing was"):
        resume(directory)
    assert listing(directory) == before


def test_a_spliced_line_with_another_config_hash_is_refused_even_when_resealed(run):
    directory, _ = run
    ledger = directory / "ledger.jsonl"
    records = [json.loads(x) for x in ledger.read_text().splitlines()]
    manifest = json.loads((directory / "manifest.json").read_text())
    head, out = chain_root(manifest), []  # the whole chain rebuilt, as a careful forger would
    for i, record in enumerate(records):
        if i == 2:
            record = {**record, "config_hash": "0123456789abcdef"}
        record = seal_line(record, head)
        head = record["chain"]
        out.append(json.dumps(record) + "\n")
    ledger.write_text("".join(out))
    with pytest.raises(LedgerError, match="edit 2 was made with config hash"):
        resume(directory)


@pytest.mark.parametrize("field", ["seed", "config", "method"])
def test_a_tampered_manifest_is_detected(run, field):
    directory, _ = run
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest[field] = {"seed": 7, "config": {**manifest["config"], "scale": 0.5},
                       "method": "memit"}[field]
    path.write_text(json.dumps(manifest))
    with pytest.raises(LedgerError, match="checksum does not match"):
        resume(directory)


def test_a_base_model_that_differs_outside_the_edited_weights_is_refused(run):
    directory, _ = run
    model, tok = tiny("llama", seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight[3, 4] += 1e-3
    with pytest.raises(LedgerError, match="embed_tokens.weight: differs"):
        EditSession.resume(directory, model, tok, method=FakeEditor(model_spec(model)))


def test_a_torn_last_line_is_still_cut_with_a_warning(run, caplog):
    directory, live = run
    with open(directory / "ledger.jsonl", "ab") as handle:
        handle.write(b'{"type": "edit", "edit_id": 5, "req')
    session, model = resume(directory)
    with session:
        assert model_hash(model) == live
    assert "cut short by a crash" in caplog.text


def test_format_1_directories_still_open_with_a_warning(run, caplog):
    directory, live = run
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    for key in ("checksum", "session_id"):
        manifest.pop(key)
    manifest["format_version"] = 1
    path.write_text(json.dumps(manifest))
    ledger = directory / "ledger.jsonl"
    lines = [json.loads(x) for x in ledger.read_text().splitlines()]
    ledger.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "chain"}) + "\n"
                              for r in lines))
    session, model = resume(directory)
    with session:
        assert model_hash(model) == live
        session.edit(make_requests(1, start=9), progress=False)  # appended lines are chained
    assert "not verified" in caplog.text
    session, _ = resume(directory)
    session.close()


def test_saved_copies_keep_their_chain(run, tmp_path):
    directory, live = run
    session, _ = resume(directory)
    with session:
        session.save(tmp_path / "copy")
    manifest = json.loads((tmp_path / "copy" / "manifest.json").read_text())
    assert seal_manifest(manifest) == manifest
    copy, model = resume(tmp_path / "copy")
    with copy:
        assert model_hash(model) == live


# -- creation races --------------------------------------------------------------------------

def _create(directory: str, seed: int, queue) -> None:
    torch.set_num_threads(1)
    model, tok = tiny("llama", seed=0)
    try:
        with EditSession(model, tok, FakeEditor(model_spec(model)), ledger_dir=directory,
                         seed=seed) as session:
            session.edit(make_requests(1, start=seed), progress=False)
        queue.put(("won", seed))
    except LedgerError as err:
        queue.put(("lost", str(err)))
    except BaseException as err:  # anything else is the bug this test looks for
        queue.put(("error", repr(err)))


@pytest.mark.parametrize("trial", range(4))
def test_two_processes_creating_one_directory_have_one_winner(tmp_path, trial):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    directory = str(tmp_path / "s")
    procs = [ctx.Process(target=_create, args=(directory, seed, queue)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    outcomes = sorted(queue.get(timeout=5) for _ in procs)
    kinds = [k for k, _ in outcomes]
    assert kinds == ["lost", "won"], outcomes
    assert "already holds a session" in outcomes[0][1]
    winner = outcomes[1][1]
    manifest = json.loads(Path(directory, "manifest.json").read_text())
    assert manifest["seed"] == winner
    session, _ = resume(Path(directory))
    with session:
        assert [r["requests"][0]["case_id"] for r in session.records()] == [winner]
    assert os.path.isdir(directory)


@pytest.mark.parametrize("method", ["memit", "rome", "alphaedit"])
def test_broken_statistics_make_a_real_editor_refuse_with_a_recorded_reason(method):
    model, tok = tiny("llama", seed=0)
    spec = model_spec(model)
    d_in = weight_shape(model, spec, 0)[1]
    c = -torch.eye(d_in) if method == "alphaedit" else torch.zeros(d_in, d_in)  # indefinite / 0
    before = model_hash(model)
    with EditSession(model, tok, method, stats=lambda layer: c, v_num_grad_steps=2,
                     **({"layer": 0} if method == "rome" else {"layers": [0]})) as session:
        result = session.edit(make_requests(1), progress=False)[0]
        line = next(session.records())
    assert result.status == "refused" and line["status"] == "refused"
    assert line["reason"].startswith("the editor could not solve this edit")
    assert "layer 0" in line["reason"]
    assert model_hash(model) == before
