"""The Editor contract, checked on every registered editor and on both storage layouts (tiny
Llama: nn.Linear [out, in]; tiny GPT-2: Conv1D [in, out]). What only one method promises (ROME's
rank-one identity, MEMIT's normal equations, AlphaEdit's null space, FT's bound) is tested in
that editor's own module."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from editor_helpers import FAST, REQUESTS

from seqedit import editors
from seqedit.session.hashing import config_dict

NAMES = sorted(editors.EDITORS)
# Short runs for the built-ins; an editor registered by a plugin runs with its defaults.
OPTIONS = {"rome": FAST, "memit": FAST, "alphaedit": FAST, "ft": dict(num_steps=4, lr=1e-2)}
ONE_REQUEST = {"rome"}  # it edits one request per step


def snapshot(model: torch.nn.Module) -> dict[str, tuple]:
    """Per parameter and buffer: its bytes, requires_grad and whether it has a grad."""
    return {name: (t.detach().cpu().reshape(-1).view(torch.uint8).clone(), t.requires_grad,
                   t.grad is None)
            for name, t in [*model.named_parameters(), *model.named_buffers()]}


@dataclass
class Run:
    tiny: Any
    editor: Any
    delta: Any
    before: dict
    after: dict


@pytest.fixture(params=NAMES)
def method(request):
    return request.param


@pytest.fixture(scope="module")
def runs():
    return {}  # (method, arch) → Run: one compute per editor and model serves every check


@pytest.fixture()
def run(runs, method, any_tiny):
    key = (method, any_tiny.spec.arch)
    if key not in runs:
        t = any_tiny
        editor = editors.create(method, t.spec, **OPTIONS.get(method, {}))
        batch = REQUESTS[:1] if method in ONE_REQUEST else REQUESTS[:2]
        before = snapshot(t.model)
        delta = editor.compute(t.model, batch, t.ctx())
        runs[key] = Run(t, editor, delta, before, snapshot(t.model))
    return runs[key]


def test_compute_changes_no_parameter_or_buffer(run):
    assert run.after.keys() == run.before.keys()
    for name, (bits, needs_grad, no_grad) in run.before.items():
        now_bits, now_needs_grad, now_no_grad = run.after[name]
        assert torch.equal(now_bits, bits), f"{name} changed"
        assert (now_needs_grad, now_no_grad) == (needs_grad, no_grad), name


def test_deltas_are_finite_and_in_the_math_orientation(run):
    spec, params = run.tiny.spec, dict(run.tiny.model.named_parameters())
    assert run.delta.method == run.editor.name and run.delta.is_finite()
    for ld in run.delta.layers:
        assert ld.rank >= 1
        assert ld.u.shape == (spec.hidden_size, ld.rank)  # [d_out, k]
        assert ld.v.shape == (spec.mlp_hidden_size, ld.rank)  # [d_in, k]
        stored = tuple(params[ld.name].shape)
        assert ld.transposed == (stored == (spec.mlp_hidden_size, spec.hidden_size))
        assert ld.transposed == spec.mlp_out_transposed


def test_deltas_change_the_mlp_out_weights_of_the_declared_layers(run):
    spec, layers = run.tiny.spec, run.editor.layers
    assert isinstance(layers, list) and layers == sorted(set(layers))
    names = [ld.name for ld in run.delta.layers]
    assert sorted(names) == sorted(spec.mlp_out_weight_name(i) for i in layers)
    index = {spec.mlp_out_weight_name(i): i for i in range(spec.num_layers)}
    assert sorted(index[n] for n in names) == layers


def editor_state(editor) -> Any:
    """What commit/revert may change: the editor's `state()` where it has one, else its attributes."""
    own = getattr(editor, "state", None)
    return copy.deepcopy(own() if callable(own) else vars(editor))


def assert_same_state(now, then) -> None:
    if isinstance(then, torch.Tensor):
        # Σ + KKᵀ − KKᵀ: equal up to the rounding of one addition, not to the bit.
        torch.testing.assert_close(now, then, rtol=0, atol=1e-12 * max(1.0, float(then.abs().max())))
    elif isinstance(then, dict):
        assert now.keys() == then.keys()
        for key in then:
            assert_same_state(now[key], then[key])
    else:
        assert now == then


def test_commit_then_revert_restores_the_editor_state(run, method):
    editor = editors.create(method, run.tiny.spec, **OPTIONS.get(method, {}))
    editor.commit(run.delta)  # a state with history, not the empty one
    then = editor_state(editor)
    editor.commit(run.delta)
    editor.revert(run.delta)
    assert_same_state(editor_state(editor), then)


def test_config_round_trips_through_json(run, method):
    spec, cfg = run.tiny.spec, run.editor.config
    _, config_cls = editors.EDITORS[method]
    data = json.loads(json.dumps(cfg.to_dict(), allow_nan=False))
    back = config_cls.from_dict(data, spec)
    assert back == cfg and hash(back) == hash(cfg)
    assert config_dict(cfg) == data  # what the session records and hashes
    with pytest.raises(ValueError, match=r"no field\(s\) \['no_such_field'\]; fields: ") as err:
        config_cls.from_dict({**data, "no_such_field": 1}, spec)
    assert all(repr(name) in str(err.value) for name in data)
