"""One battery over the three open registries (editors, guards, evaluators): what a user
registers is created by name, and a registration that could make a recorded name mean something
else is refused without changing anything."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from seqedit import guards, metrics
from seqedit._registry import Registry
from seqedit.editors import RomeConfig, RomeEditor, register_editor
from seqedit.editors import registry as editor_registry
from seqedit.guards import registry as guard_registry
from seqedit.metrics import registry as metric_registry


class NoteGuard:
    def __init__(self, tag="x"):
        self.tag = tag


class NoteEvaluator:
    def __init__(self, every=1):
        self.every = every


class OwnRome(RomeEditor):
    name = "own"


@dataclass
class Case:
    registry: Registry
    register: object
    value: tuple  # arguments after the name
    builtin: str

    def create(self, name):
        if self.registry is editor_registry._EDITORS:
            return self.registry[name]
        return (guards.create if self.registry is guard_registry.GUARDS else metrics.create)(name)


CASES = {
    "editors": Case(editor_registry._EDITORS, register_editor, (OwnRome, RomeConfig), "memit"),
    "guards": Case(guard_registry.GUARDS, guards.register_guard, (NoteGuard,), "prune"),
    "evaluators": Case(metric_registry.EVALUATORS, metrics.register_evaluator, (NoteEvaluator,), "health"),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    """The registries outlive a test: what one registers is dropped again afterwards."""
    c = CASES[request.param]
    saved = dict(c.registry._registered)
    yield c
    c.registry._registered.clear()
    c.registry._registered.update(saved)


def test_a_registered_name_is_created_and_listed(case):
    case.register("own", *case.value)
    assert "own" in case.registry and list(case.registry) == sorted(case.registry)
    made = case.create("own")
    if case.registry is editor_registry._EDITORS:
        assert made == (OwnRome, RomeConfig)
    else:
        assert type(made) is case.value[0]


@pytest.mark.parametrize("name,match", [("", "non-empty str"), (None, "non-empty str"),
                                        ("BUILTIN", "is already registered")])
def test_a_bad_or_taken_name_is_refused_and_nothing_changes(case, name, match):
    name = case.builtin if name == "BUILTIN" else name
    before = {n: case.registry[n] for n in case.registry}
    with pytest.raises(ValueError, match=match):
        case.register(name, *case.value)
    assert {n: case.registry[n] for n in case.registry} == before


def test_a_name_registered_once_cannot_be_replaced(case):
    case.register("own", *case.value)
    with pytest.raises(ValueError, match="'own' is already registered"):
        case.register("own", *case.value)
    assert case.create("own") is not None


def test_an_unusable_value_is_refused(case):
    with pytest.raises(TypeError):
        case.register("own", *(object() for _ in case.value))
    assert "own" not in case.registry


def test_an_unknown_name_lists_what_is_available():
    for create, kind in ((guards.create, "guard"), (metrics.create, "evaluator")):
        with pytest.raises(ValueError, match=rf"unknown {kind} 'nope'; available: \[.*'"):
            create("nope")


def test_the_evaluators_are_imported_only_when_used():
    code = ("import sys, seqedit.metrics as m; assert 'health' in m.available(); "
            "assert 'lm_eval' not in sys.modules and 'seqedit.metrics.general' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
