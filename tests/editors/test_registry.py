"""Registry, configs and their validation, non-finite inputs, the recorded config hash."""
from __future__ import annotations

import dataclasses
import types

import pytest
import torch
from editor_helpers import FAST, REQUESTS, weights_digest

from seqedit import editors
from seqedit._version import __version__
from seqedit.editors import (AlphaEditConfig, FTConfig, MemitConfig, RomeConfig, RomeEditor,
                             register_editor, registry)
from seqedit.models import tiny
from seqedit.session import EditSession
from seqedit.session.hashing import config_dict, config_hash
from seqedit.session.replay import check_same_editor


def test_registry_is_read_only_and_holds_the_builtins():
    assert set(editors.EDITORS) >= {"rome", "memit", "alphaedit", "ft"}
    with pytest.raises(TypeError):
        editors.EDITORS["x"] = None  # type: ignore[index]
    for name, (cls, cfg_cls) in editors.EDITORS.items():
        assert cls.name == name and hasattr(cfg_cls, "for_model") and hasattr(cfg_cls, "from_dict")


@pytest.fixture()
def scratch_registry():
    """The registry outlives a test: what one registers is dropped again afterwards."""
    saved = dict(registry._EDITORS._registered)
    yield
    registry._EDITORS._registered.clear()
    registry._EDITORS._registered.update(saved)


class PlainRome(RomeEditor):
    name = "plain-rome"


def test_a_registered_editor_is_created_by_name(llama, scratch_registry):
    register_editor("plain-rome", PlainRome, RomeConfig)
    assert editors.EDITORS["plain-rome"] == (PlainRome, RomeConfig)
    ed = editors.create("plain-rome", llama.spec, mom2_adjustment=False)
    assert type(ed) is PlainRome and ed.config.mom2_adjustment is False
    for taken in ("plain-rome", "memit"):
        with pytest.raises(ValueError, match=f"{taken!r} is already registered"):
            register_editor(taken, PlainRome, RomeConfig)


@pytest.mark.parametrize("args,match", [
    (("", PlainRome, RomeConfig), "non-empty str"),
    (("other-rome", PlainRome, RomeConfig), "whose `name` is 'other-rome'"),
    (("plain-rome", PlainRome(RomeConfig()), RomeConfig), "must be a class"),
    (("plain-rome", PlainRome, dataclasses.make_dataclass("Bare", ["x"])), "has no for_model, from_dict"),
])
def test_register_editor_refuses_what_create_or_resume_could_not_use(args, match, scratch_registry):
    with pytest.raises((TypeError, ValueError), match=match):
        register_editor(*args)
    assert "plain-rome" not in editors.EDITORS


def test_a_registered_editor_resumes_from_its_ledger(tmp_path, scratch_registry):
    register_editor("plain-rome", PlainRome, RomeConfig)
    model, tok = tiny("llama", seed=0)
    with EditSession(model, tok, "plain-rome", ledger_dir=tmp_path / "s", mom2_adjustment=False,
                     context_template_starts=["The", "A"], **FAST) as session:
        session.edit(REQUESTS[:1], progress=False, probe=False)
        config = session._editor.config
    fresh, _ = tiny("llama", seed=0)
    with EditSession.resume(tmp_path / "s", fresh, tok, progress=False) as resumed:
        assert type(resumed._editor) is PlainRome and resumed._editor.config == config
        assert resumed.live_edits == [0]
    assert weights_digest(fresh) == weights_digest(model)


def stub_editor(**attrs):
    def nothing(*args):
        return None

    return types.SimpleNamespace(name="stub", config=None, compute=nothing, commit=nothing,
                                 revert=nothing, **attrs)


@pytest.mark.parametrize("layers,named", [
    ((1,), None), ([0, 3], None),
    (1, "must be a list of layer indices, got int 1"), ([], "must not be empty"),
    ([4], "contains 4, not a layer index of this 4-layer model"), ([True], "contains True"),
    ([1, 1], "has duplicates"), ([2, 0], "must be sorted, got [2, 0]"),
])
def test_a_session_refuses_an_editor_without_usable_layers(llama, layers, named):
    from seqedit.session.checks import check_editor

    if named is None:
        check_editor(stub_editor(layers=layers), llama.spec)
        return
    with pytest.raises(ValueError) as err:
        EditSession(llama.model, llama.tokenizer, stub_editor(layers=layers))
    assert f"SimpleNamespace.layers {named}" in str(err.value)


def test_a_session_refuses_an_editor_that_declares_no_layers(llama):
    with pytest.raises(TypeError, match="it has no layers"):
        EditSession(llama.model, llama.tokenizer, stub_editor())


# A default MEMIT session on tiny llama recorded this manifest config under seqedit 0.1.0 before
# configs owned their serialisation; its ledger lines carry RECORDED_HASH.
RECORDED_MEMIT = {
    "argmax_margin": 0.0, "clamp_norm_factor": 4.0, "context_template_length": 10,
    "context_template_starts": ["The", "Therefore", "Because", "I", "You"], "early_stop_loss": 0.05,
    "early_stop_on_argmax": False, "fast": True, "kl_factor": 0.0625, "kl_prompt": "{} is a",
    "layers": [0, 1, 2, 3], "mom2_update_weight": 218.0, "targets": "auto", "v_loss_layer": 3,
    "v_lr": 0.5, "v_num_grad_steps": 25, "v_weight_decay": 0.001,
}
RECORDED_HASH = "481e3786e2d2337f"


def test_a_default_memit_config_keeps_its_recorded_hash(llama):
    assert config_hash("memit", RECORDED_MEMIT, "0.1.0") == RECORDED_HASH
    now = config_dict(MemitConfig.for_model(llama.spec))
    # Fields added since are left out: they hold their defaults, which the resume checks accept.
    assert config_hash("memit", {k: now[k] for k in RECORDED_MEMIT}, "0.1.0") == RECORDED_HASH
    rebuilt = MemitConfig.from_dict(RECORDED_MEMIT, llama.spec)
    manifest = {"method": "memit", "config": RECORDED_MEMIT, "seqedit_version": __version__}
    check_same_editor("ledger", manifest, "memit", rebuilt)


def test_create_derives_defaults_from_spec(llama, gpt2):
    m = editors.create("memit", llama.spec)
    assert m.config.layers == tuple(llama.spec.default_edit_layers())
    assert m.config.v_loss_layer == llama.spec.num_layers - 1 and m.config.clamp_norm_factor == 4.0
    assert editors.create("memit", gpt2.spec).config.clamp_norm_factor == 0.75
    assert editors.create("memit", gpt2.spec).config.v_weight_decay == 0.5
    renamed = dataclasses.replace(gpt2.spec, arch="my-custom-lm")  # chosen by structure, not by name
    assert editors.create("alphaedit", renamed).config.clamp_norm_factor == 0.75
    assert editors.create("rome", llama.spec).config.layer == llama.spec.default_rome_layer()
    assert editors.create("rome", llama.model).config.layer == llama.spec.default_rome_layer()
    assert isinstance(editors.create("ft", llama.spec), editors.Editor)


@pytest.mark.parametrize("name,override,match", [
    ("rome", {"layer": 99}, "layer"),
    ("rome", {"v_lr": 0}, "v_lr"),
    ("memit", {"layers": []}, "layers"),
    ("memit", {"layers": [1, 1]}, "duplicates"),
    ("memit", {"mom2_update_weight": -1}, "mom2_update_weight"),
    ("memit", {"v_num_grad_steps": 0}, "v_num_grad_steps"),
    ("memit", {"kl_prompt": "no placeholder"}, "kl_prompt"),
    ("memit", {"argmax_margin": -0.5}, "argmax_margin"),
    ("alphaedit", {"nullspace_threshold": 2.0}, "nullspace_threshold"),
    ("alphaedit", {"l2_weight": 0}, "l2_weight"),
    ("ft", {"norm_constraint": 0}, "norm_constraint"),
    ("memit", {"no_such_field": 1}, "no_such_field"),
])
def test_bad_config_values_are_clear_errors(llama, name, override, match):
    with pytest.raises(ValueError, match=match):
        editors.create(name, llama.spec, **override)


def test_unknown_editor(llama):
    with pytest.raises(ValueError, match="unknown editor"):
        editors.create("mend", llama.spec)


@pytest.mark.parametrize("name", ["rome", "memit", "alphaedit"])
def test_non_finite_statistics_are_a_solve_error(llama, requests_, name):
    bad = {layer: torch.full_like(c, float("nan")) for layer, c in llama.c.items()}
    with pytest.raises(editors.SolveError, match="non-finite"):
        editors.create(name, llama.spec, **FAST).compute(llama.model, requests_[:1], llama.ctx(c=bad))


def test_configs_are_frozen(llama):
    for cfg in (RomeConfig.for_model(llama.spec), MemitConfig.for_model(llama.spec),
                AlphaEditConfig.for_model(llama.spec), FTConfig.for_model(llama.spec)):
        with pytest.raises(AttributeError):
            cfg.v_lr = 1.0  # type: ignore[misc]
