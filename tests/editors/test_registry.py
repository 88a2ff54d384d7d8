"""Registry, configs and their validation, non-finite inputs."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from editor_helpers import FAST

from seqedit import editors
from seqedit.editors import AlphaEditConfig, FTConfig, MemitConfig, RomeConfig


def test_registry_is_immutable_and_complete():
    assert set(editors.EDITORS) == {"rome", "memit", "alphaedit", "ft"}
    with pytest.raises(TypeError):
        editors.EDITORS["x"] = None  # type: ignore[index]
    for name, (cls, cfg_cls) in editors.EDITORS.items():
        assert cls.name == name and hasattr(cfg_cls, "for_model")


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
