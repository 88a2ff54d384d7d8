"""Editor configuration at the edge: every bad hyperparameter is named, with its value, in one
ValueError raised when the editor is built; `create` names the registered methods."""
from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from seqedit import editors
from seqedit.editors import EDITORS, MemitConfig, RomeConfig
from seqedit.models import spec as model_spec
from seqedit.models import tiny


@pytest.fixture(scope="module")
def spec():
    return model_spec(tiny("llama", seed=0)[0])  # only its layer count matters here


def fields_of(kind):
    """(method, field) for every field annotated `kind` in every registered config."""
    return [(method, name) for method, (_, cfg) in sorted(EDITORS.items())
            for name, hint in typing.get_type_hints(cfg).items() if hint is kind]


FLOAT_FIELDS = fields_of(float)
INT_FIELDS = fields_of(int)
BOOL_FIELDS = fields_of(bool)
STR_FIELDS = fields_of(str)


def test_the_field_lists_cover_every_config_field():
    # A field of another kind would get no type check; this fails until one is written for it.
    for _, (_, cfg) in EDITORS.items():
        for name, hint in typing.get_type_hints(cfg).items():
            assert hint in (float, int, bool, str) or typing.get_origin(hint) is tuple, (cfg, name)
    floats = {name for _, name in FLOAT_FIELDS}
    assert floats >= {"v_lr", "clamp_norm_factor", "mom2_update_weight", "kl_factor",
                      "v_weight_decay", "early_stop_loss", "argmax_margin", "l2_weight", "lr",
                      "nullspace_threshold", "norm_constraint"}


def rejects(spec, method, **overrides):
    with pytest.raises(ValueError) as info:
        editors.create(method, spec, **overrides)
    message = str(info.value)
    assert message.startswith(f"invalid {EDITORS[method][1].__name__}: ")
    return message


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "0.5", True, False, None,
                                   [0.5], 10 ** 400])
@pytest.mark.parametrize("method,field", FLOAT_FIELDS)
def test_float_fields_take_finite_numbers_only(spec, method, field, value):
    message = rejects(spec, method, **{field: value})
    assert f"{field} must be" in message and repr(value)[:40] in message
    assert message.count(field) == 1  # named once, not again by its range rule


@pytest.mark.parametrize("method,field", FLOAT_FIELDS)
def test_float_fields_take_ints(spec, method, field):
    # A bound check may still refuse 1 (a relative nullspace threshold must be < 1), but never
    # as a type: an int is a number.
    try:
        editors.create(method, spec, **{field: 1})
    except ValueError as err:
        assert f"{field} must be a number" not in str(err)
        assert f"{field} must be finite" not in str(err)


@pytest.mark.parametrize("value", [True, 1.0, "2", None])
@pytest.mark.parametrize("method,field", INT_FIELDS)
def test_int_fields_take_ints_only(spec, method, field, value):
    message = rejects(spec, method, **{field: value})
    assert f"{field} must be an int, got {type(value).__name__} {value!r}" in message


@pytest.mark.parametrize("value", [1, 0, "yes", None])
@pytest.mark.parametrize("method,field", BOOL_FIELDS)
def test_bool_fields_take_bools_only(spec, method, field, value):
    message = rejects(spec, method, **{field: value})
    assert f"{field} must be True or False, got {type(value).__name__} {value!r}" in message


@pytest.mark.parametrize("value", [None, 3, ["{} is a"]])
@pytest.mark.parametrize("method,field", STR_FIELDS)
def test_str_fields_take_strings_only(spec, method, field, value):
    message = rejects(spec, method, **{field: value})
    assert f"{field} must be a string, got {type(value).__name__} {value!r}" in message


def test_a_string_that_is_not_unicode(spec):
    message = rejects(spec, "rome", kl_prompt="{} is \ud800")
    assert "kl_prompt" in message and "lone surrogate" in message


@pytest.mark.parametrize("method,field,value,named", [
    ("memit", "layers", [True], "layers[0] must be an int, got bool True"),
    ("alphaedit", "layers", [0, False], "layers[1] must be an int, got bool False"),
    ("memit", "layers", ["1"], "layers[0] must be an int, got str '1'"),
    ("memit", "layers", [1.0], "layers[0] must be an int, got float 1.0"),
    ("rome", "layer", True, "layer must be an int, got bool True"),
    ("ft", "layer", False, "layer must be an int, got bool False"),
    ("memit", "context_template_starts", ["The", 3], "context_template_starts[1] must be a string"),
    ("rome", "context_template_starts", "The", "context_template_starts must be a list of str"),
])
def test_layer_and_list_fields(spec, method, field, value, named):
    assert named in rejects(spec, method, **{field: value})


def test_check_layers_refuses_bools(spec):
    from seqedit.editors.config import check_layers

    assert list(check_layers([0, 1], spec)) == []
    (problem,) = check_layers([0, True], spec)
    assert "True" in problem


def test_every_bad_field_in_one_error(spec):
    message = rejects(spec, "memit", v_lr="0.5", kl_factor=math.nan, fast=1, layers=[True],
                      v_num_grad_steps=0, mom2_update_weight=-1.0, kl_prompt="no hole")
    for named in ("v_lr must be a number, got str '0.5'", "kl_factor must be finite, got nan",
                  "fast must be True or False, got int 1", "layers[0] must be an int",
                  "v_num_grad_steps must be an int >= 1, got 0",
                  "mom2_update_weight must be >= 0, got -1.0", "kl_prompt must contain"):
        assert named in message
    assert message.count(";") == 6


def test_direct_construction_is_checked_too(spec):
    with pytest.raises(ValueError, match="v_lr must be a number, got str '0.5'"):
        MemitConfig(v_lr="0.5").check(spec)  # was a TypeError from `"0.5" > 0`
    with pytest.raises(ValueError, match="v_loss_layer must be an int, got bool True"):
        RomeConfig(v_loss_layer=True).check(spec)
    RomeConfig().check(spec)


def test_good_values_still_build(spec):
    cfg = editors.create("memit", spec, v_lr=1, context_template_starts=["The", "A"],
                         layers=[0, 1])
    assert cfg.config.context_template_starts == ("The", "A") and cfg.config.layers == (0, 1)
    hash(cfg.config)  # lists became tuples: the frozen config stays hashable
    assert dataclasses.replace(cfg.config, v_lr=0.25).v_lr == 0.25


# ---- create ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, 3, ["rome"], b"rome", object()])
def test_create_with_a_name_that_is_not_a_string(spec, name):
    with pytest.raises(ValueError) as info:
        editors.create(name, spec)
    message = str(info.value)
    assert "method name" in message and type(name).__name__ in message
    assert all(method in message for method in EDITORS)


def test_create_with_an_unknown_name(spec):
    with pytest.raises(ValueError) as info:
        editors.create("mend", spec)
    assert "'mend'" in str(info.value) and all(m in str(info.value) for m in EDITORS)


def test_create_with_an_editor_returns_it(spec):
    editor = editors.create("rome", spec)
    assert editors.create(editor, spec) is editor
    with pytest.raises(TypeError, match="v_lr"):
        editors.create(editor, spec, v_lr=0.1)


@pytest.mark.parametrize("bad_spec", [None, "llama", 12])
def test_create_with_a_spec_that_is_neither_spec_nor_model(bad_spec):
    with pytest.raises(ValueError, match="spec must be a seqedit.models.ModelSpec or the model"):
        editors.create("rome", bad_spec)


def test_a_learning_rate_beyond_any_edit_is_refused():
    spec = model_spec(tiny("llama", seed=0)[0])
    with pytest.raises(ValueError, match=r"v_lr must be <= 1e6, got 1e\+30"):
        editors.create("memit", spec, v_lr=1e30)
    with pytest.raises(ValueError, match="layers must be a list of int, got int 5"):
        editors.create("memit", spec, layers=5)
