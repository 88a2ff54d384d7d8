"""Run configs: every kind of mistake is named in one message, exit code 2, nothing runs."""
from __future__ import annotations

import inspect

import pytest

from seqedit import stats
from seqedit.cli import main
from seqedit.cli import config as configs
from seqedit.cli.demo import demo_configs
from seqedit.session import EditSession


def _problems(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_every_problem_is_listed_at_once(write_config, capsys, tmp_path):
    path = write_config(methd="rome", batch_size="two", data={"source": "nosuch.jsonl", "edit": 4},
                        guards=["d4x", {"name": "prune", "mode": "sometimes"}, 7],
                        evaluators={"editng": {}, "health": {"nope": 1}},
                        method_options={"layer": [0]}, dtype="float8", seed=1.5)
    err = _problems(capsys, "run", str(path))
    expected = ["methd: unknown key (did you mean 'method'?)",
                "batch_size: must be an integer, got str 'two'",
                "data.edit: unknown key (did you mean 'edits'?)",
                "data.source: 'nosuch.jsonl' is neither a packaged dataset",
                "guards[0]: unknown guard 'd4x' (did you mean 'd4s'?)",
                "guards[1] (prune): prune: mode must be one of",
                "guards[2]: must be a guard name or a mapping",
                "evaluators.editng: unknown evaluator",
                "evaluators.health: evaluator 'health': unknown option(s) ['nope']",
                "method_options.layer: memit has no such option (did you mean 'layers'?)",
                "dtype: 'float8' is not one of",
                "seed: must be an integer, got float 1.5"]
    for text in expected:
        assert text in err, (text, err)
    assert f"{len(expected)} problem(s)" in err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


def test_values_that_only_make_sense_together(write_config, capsys):
    path = write_config(batch_size=3, eval_every=4, data={"edits": 0, "start": -1},
                        stats={"max_tokens": 0}, model="no/such/model",
                        method="memmit")
    err = _problems(capsys, "run", str(path), "--set", "data.split=test")
    for text in ["eval_every: 4 edits is not a multiple of batch_size 3",
                 "data.edits: must be > 0, got 0", "data.start: must be ≥ 0, got -1",
                 "stats.max_tokens: must be > 0", "model: 'no/such/model' is neither a packaged",
                 "method: unknown method 'memmit' (did you mean 'memit'?)",
                 "data.split: counterfact has no split 'test' (splits: edit, train)"]:
        assert text in err, (text, err)


def test_file_level_mistakes(tmp_path, capsys):
    assert "no such file" in _problems(capsys, "run", str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("output: out\nmethod: [memit\n")
    assert "not valid YAML (line 3" in _problems(capsys, "run", str(bad))
    bad.write_text("- just\n- a list\n")
    assert "must hold a mapping of keys, got list" in _problems(capsys, "run", str(bad))
    bad.write_text("method: memit\n")
    assert "output: required" in _problems(capsys, "run", str(bad))


def test_set_overrides_are_yaml_typed_and_checked(write_config, capsys):
    problems: list[str] = []
    data = configs.apply_sets({"data": {"edits": 3}}, ["data.edits=12", "guards=[d4s]",
                                                      "method_options.v_lr=0.1", "name=x y",
                                                      "oops"], problems)
    assert data == {"data": {"edits": 12}, "guards": ["d4s"], "method_options": {"v_lr": 0.1},
                    "name": "x y"}
    assert problems == ["--set 'oops': expected key=value"]
    err = _problems(capsys, "run", str(write_config()), "--set", "eval_every=often")
    assert "eval_every: must be an integer or null, got str 'often'" in err


def test_debug_shows_the_traceback(write_config):
    with pytest.raises(configs.ConfigError):
        main(["--debug", "run", str(write_config(method="memmit"))])


def test_one_source_of_defaults(tmp_path):
    """The CLI, the demo and the Python API share the statistics budget (so one cache)."""
    api = inspect.signature(stats.second_moments).parameters["max_tokens"].default
    cfg = configs.resolve({"output": str(tmp_path / "o")})
    assert cfg["stats"]["max_tokens"] == api == stats.api.DEFAULT_MAX_TOKENS
    assert all(c["stats"]["max_tokens"] == api for c in demo_configs(tmp_path, quick=True))
    session_default = inspect.signature(EditSession).parameters["max_delta_ratio"].default
    assert cfg["max_delta_ratio"] == session_default


def test_reference_lists_every_key():
    text = configs.reference()
    for key in configs.flat_keys():
        assert key in text


def test_check_validates_and_prints_the_resolved_config(write_config, capsys, tmp_path):
    assert main(["run", str(write_config()), "--check", "--set", "guards=[d4s]"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "- d4s" in out and "max_tokens: 2000" in out
    assert not (tmp_path / "out").exists()


def test_the_readme_example_config_is_valid(tmp_path, capsys):
    """The config shown in the README, checked as written."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(# runs/memit-d4s.yaml.*?)```", readme, re.S).group(1)
    path = tmp_path / "memit-d4s.yaml"
    path.write_text(block)
    assert main(["run", str(path), "--check"]) == 0, capsys.readouterr().err
