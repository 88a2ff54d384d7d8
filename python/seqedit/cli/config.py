"""Run configs: a YAML file (plus `--set key=value` overrides) checked against one schema.

Every problem is collected before anything runs, so one message lists them all: unknown keys
(with the nearest known one), wrong types, missing files, unknown methods, guards and evaluators
and their unknown options. Defaults live here and nowhere else in the CLI; the statistics budget
is the library's own (`seqedit.stats.DEFAULT_MAX_TOKENS`), so the demo, the CLI and the Python
API share one cache.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..session.checks import MAX_DELTA_RATIO
from ..stats.api import DEFAULT_MAX_TOKENS


class ConfigError(ValueError):
    """A config with problems; `problems` lists each as 'where: what'."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the run config:\n{lines}")


@dataclass(frozen=True)
class Key:
    types: tuple[type, ...]
    default: Any
    help: str
    required: bool = False

    def kind(self) -> str:
        names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
                 list: "a list", dict: "a mapping", type(None): "null"}
        return " or ".join(names[t] for t in self.types)


NUMBER = (int, float)
SCHEMA: dict[str, Any] = {
    "output": Key((str,), None, "run directory: created, or resumed when it holds this run",
                  required=True),
    "name": Key((str, type(None)), None, "label in reports (default: the output folder's name)"),
    "model": Key((str,), "smollm2-135m", "packaged model name, or a local model directory or "
                 ".safetensors file"),
    "dtype": Key((str,), "float32", "float32, bfloat16 or float16"),
    "method": Key((str,), "memit", "editing method (`seqedit models` lists them)"),
    "method_options": Key((dict,), {}, "the method's hyperparameters, e.g. {layers: [4, 5]}"),
    "guards": Key((list,), [], "guards in order: names or {name: ..., option: value}"),
    "data": {
        "source": Key((str,), "counterfact", "packaged dataset name or a .json/.jsonl file"),
        "split": Key((str, type(None)), None, "dataset split (packaged CounterFact: edit or train); null: the default"),
        "start": Key((int,), 0, "index of the first record to edit"),
        "edits": Key((int,), 100, "number of records to edit"),
    },
    "batch_size": Key((int,), 1, "requests per editing step"),
    "evaluators": Key((dict,), {"editing": {}, "health": {}},
                      "evaluator name → its options (`seqedit models` lists them)"),
    "eval_every": Key((int, type(None)), 100, "evaluate every N edits (a multiple of "
                      "batch_size); null: only before and after"),
    "seed": Key((int,), 0, "seed of every random choice"),
    "stats": {
        "max_tokens": Key((int,), DEFAULT_MAX_TOKENS, "corpus tokens for the key statistics"),
        "corpus": Key((str, type(None)), None, "packaged corpus name or a text/jsonl file; "
                      "null: the packaged wikipedia_vital"),
    },
    "threads": Key((int, type(None)), None, "CPU threads for torch; null: torch's default"),
    "max_delta_ratio": Key(NUMBER, MAX_DELTA_RATIO, "refuse an edit whose ‖ΔW‖ exceeds this "
                           "× ‖W₀‖"),
}
DTYPES = ("float32", "bfloat16", "float16")
# Keys that may change when a run is continued: they do not change what an edit is.
RESUMABLE_CHANGES = ("data.edits", "threads", "name")
# Mappings whose keys are the user's (options, evaluator names): replaced and compared whole.
OPAQUE = ("method_options", "evaluators")


def defaults(schema: dict = SCHEMA) -> dict[str, Any]:
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default)
            for k, v in schema.items()}


def flat_keys(schema: dict = SCHEMA, prefix: str = "") -> dict[str, Key]:
    out: dict[str, Key] = {}
    for k, v in schema.items():
        if isinstance(v, dict):
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file; ConfigError for a missing file, bad YAML or a non-mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [f"{path}: no such file"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(str(path), [f"not valid YAML{where}: "
                                      f"{getattr(err, 'problem', None) or err}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"the file must hold a mapping of keys, got "
                                      f"{type(data).__name__}"])
    return data


def apply_sets(data: dict[str, Any], sets: list[str], problems: list[str]) -> dict[str, Any]:
    """`key.sub=value` overrides (values parsed as YAML: numbers, true, [a, b], {k: v})."""
    import yaml

    data = copy.deepcopy(data)
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected key=value")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return data


def _suggest(name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(sorted(known))})"


def _check_shape(data: dict, schema: dict, prefix: str, problems: list[str]) -> dict:
    """`data` without the keys that are unknown or of the wrong type (each one a problem), so
    the values of the others can still be checked and every problem reported at once."""
    sound = {}
    for key, value in data.items():
        where = prefix + str(key)
        if key not in schema:
            problems.append(f"{where}: unknown key{_suggest(str(key), list(schema))}")
            continue
        spec = schema[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                problems.append(f"{where}: must be a mapping with keys {', '.join(spec)}")
            else:
                sound[key] = _check_shape(value, spec, where + ".", problems)
        elif isinstance(value, bool) and bool not in spec.types or \
                not isinstance(value, spec.types):
            problems.append(f"{where}: must be {spec.kind()}, got {type(value).__name__} "
                            f"{value!r:.60}")
        else:
            sound[key] = value
    return sound


def _get(data: Any, key: str) -> Any:
    """The value at dotted `key`, None where the path is missing."""
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            and k not in OPAQUE else copy.deepcopy(v)
    return out


def resolve(data: dict[str, Any], source: str = "config", *, base_dir: Path | None = None
            ) -> dict[str, Any]:
    """The complete, checked config: `data` over the defaults. Raises ConfigError listing every
    problem. Relative paths (output, data source and corpus files) are taken from `base_dir`
    (the current directory by default) and stored absolute, so a resumed run finds them."""
    problems: list[str] = []
    sound = _check_shape(data, SCHEMA, "", problems)
    for name, key in flat_keys().items():
        if key.required and _get(data, name) is None:
            problems.append(f"{name}: required ({key.help})")
            sound[name] = "."  # a placeholder, so that the other values are still checked
    cfg = _merge(defaults(), sound)
    base_dir = Path.cwd() if base_dir is None else base_dir
    cfg["output"] = str((base_dir / cfg["output"]).resolve())
    _check_values(cfg, base_dir, problems)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _positive(cfg: dict, key: str, problems: list[str], *, zero: bool = False) -> None:
    node = _get(cfg, key)
    if node is not None and (node < 0 or node == 0 and not zero):
        problems.append(f"{key}: must be {'≥ 0' if zero else '> 0'}, got {node}")


def _check_values(cfg: dict, base_dir: Path, problems: list[str]) -> None:
    for key in ("data.edits", "batch_size", "stats.max_tokens", "threads", "eval_every",
                "max_delta_ratio"):
        _positive(cfg, key, problems)
    _positive(cfg, "data.start", problems, zero=True)
    if cfg["dtype"] not in DTYPES:
        problems.append(f"dtype: {cfg['dtype']!r} is not one of {', '.join(DTYPES)}")
    every, batch = cfg["eval_every"], cfg["batch_size"]
    if isinstance(every, int) and batch > 0 and every > 0 and every % batch:
        problems.append(f"eval_every: {every} edits is not a multiple of batch_size {batch} "
                        "(evaluations run between steps)")
    _check_model(cfg, base_dir, problems)
    _check_data(cfg, base_dir, problems)
    _check_method(cfg, problems)
    _check_guards(cfg, problems)
    _check_evaluators(cfg, problems)


def _check_model(cfg: dict, base_dir: Path, problems: list[str]) -> None:
    from ..models import PACKAGED

    if cfg["model"] in PACKAGED:
        return
    path = base_dir / cfg["model"]
    if not path.exists():
        problems.append(f"model: {cfg['model']!r} is neither a packaged model "
                        f"({', '.join(PACKAGED)}) nor an existing path")
    else:
        cfg["model"] = str(path.resolve())


def _named_or_file(cfg: dict, key: str, names, what: str, base_dir: Path,
                   problems: list[str]) -> bool:
    """Whether `key` holds a packaged name; a file path is made absolute or is a problem."""
    section, field = key.split(".")
    value = cfg[section][field]
    if value in names:
        return True
    path = base_dir / value
    if path.is_file():
        cfg[section][field] = str(path.resolve())
    else:
        problems.append(f"{key}: {value!r} is neither a packaged {what} ({', '.join(names)}) "
                        "nor an existing file")
    return False


def _check_data(cfg: dict, base_dir: Path, problems: list[str]) -> None:
    from ..data import available
    from ..data.corpus import CORPORA

    names = available()
    source, split = cfg["data"]["source"], cfg["data"]["split"]
    if _named_or_file(cfg, "data.source", names, "dataset", base_dir, problems) and \
            split is not None and split not in names[source]:
        problems.append(f"data.split: {source} has no split {split!r} "
                        f"(splits: {', '.join(names[source])})")
    if cfg["stats"]["corpus"] is not None:
        _named_or_file(cfg, "stats.corpus", CORPORA, "corpus", base_dir, problems)


def _check_method(cfg: dict, problems: list[str]) -> None:
    from ..editors import EDITORS

    method = cfg["method"]
    if method not in EDITORS:
        problems.append(f"method: unknown method {method!r}{_suggest(method, list(EDITORS))}")
        return
    fields = [f.name for f in dataclasses.fields(EDITORS[method][1])]
    for option in cfg["method_options"]:
        if option not in fields:
            problems.append(f"method_options.{option}: {method} has no such option"
                            f"{_suggest(str(option), fields)}")


def _check_guards(cfg: dict, problems: list[str]) -> None:
    from ..guards import registry

    known = registry.available()
    for i, item in enumerate(cfg["guards"]):
        where = f"guards[{i}]"
        options: dict[str, Any] = {}
        if isinstance(item, dict):
            options = dict(item)
            name = options.pop("name", None)
            if not isinstance(name, str):
                problems.append(f"{where}: a guard given as a mapping needs a 'name' "
                                f"({', '.join(known)})")
                continue
        elif isinstance(item, str):
            name = item
        else:
            problems.append(f"{where}: must be a guard name or a mapping, got {item!r:.60}")
            continue
        if name not in known:
            problems.append(f"{where}: unknown guard {name!r}{_suggest(name, known)}")
            continue
        try:
            registry.create(name, **options)
        except (TypeError, ValueError) as err:
            problems.append(f"{where} ({name}): {err}")


def _check_evaluators(cfg: dict, problems: list[str]) -> None:
    from ..metrics import registry

    known = registry.available()
    for name, options in cfg["evaluators"].items():
        where = f"evaluators.{name}"
        if name not in known:
            problems.append(f"{where}: unknown evaluator{_suggest(str(name), known)}")
            continue
        if options is None:
            cfg["evaluators"][name] = options = {}
        if not isinstance(options, dict):
            problems.append(f"{where}: options must be a mapping, got {options!r:.60}")
            continue
        try:
            registry.create(name, **options)
        except (TypeError, ValueError, ImportError) as err:
            problems.append(f"{where}: {err}")


def dump(cfg: dict[str, Any]) -> str:
    """The YAML form of a config, keys in schema order (run.yaml, the demo's configs, --check)."""
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key not in OPAQUE:
            out += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def reference() -> str:
    """The config reference: every key, its default and what it means (for docs and --help)."""
    import json

    lines = []
    for name, key in flat_keys().items():
        default = "(required)" if key.required else json.dumps(key.default, ensure_ascii=False)
        lines.append(f"{name:<20} {default:<28} {key.help}")
    return "\n".join(lines)
