"""seqedit's packaged lm-evaluation-harness tasks, run in-process on an in-memory model.

A task is `tasks/<name>.yaml`: an lm-eval task config plus a `seqedit:` section (the reader that
builds its documents from the packaged files, the metrics to report, how its chance level is
computed). Configs never name a dataset: `load` gives lm-eval a `custom_dataset` that returns the
documents already read, so nothing is looked up on the hub and the files are found wherever the
package is installed. Values written `seqedit:<name>` are the functions of `task_docs.FUNCTIONS`.

A seeded limit takes the first `limit` documents of a seed's fixed order (documents sorted by a
hash of seed and index), so every checkpoint of a run sees the same documents, and a smaller
limit's documents are a subset of a larger one's. lm-eval's request and response caches are
never used: an edited model must be scored afresh.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .task_docs import FUNCTIONS

TASK_DIR = Path(__file__).parent / "tasks"
# What every general/safety score was measured with (a protocol label, part of the cache key).
HARNESS = "lm-eval 0.4.13, HFLM with shared contexts (seqedit.metrics.harness_lm)"
_OFFLINE = (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"))
_FUNCTION_PREFIX = "seqedit:"
logger = logging.getLogger(__name__)


def require_lm_eval() -> Any:
    """lm_eval, or an ImportError saying what to install. Before the first import it sets the
    HF offline variables unless the caller set them: datasets and huggingface_hub read them at
    import time, and nothing here may reach the network."""
    for key, value in _OFFLINE:
        os.environ.setdefault(key, value)
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401
    except ImportError as err:
        raise ImportError("the 'general' and 'safety' evaluators run lm-evaluation-harness, "
                          "which is not installed: pip install 'seqedit[eval]' "
                          "(or pip install 'lm-eval==0.4.13')") from err
    return lm_eval


@contextlib.contextmanager
def offline() -> Iterator[None]:
    saved = {key: os.environ.get(key) for key, _ in _OFFLINE}
    os.environ.update(dict(_OFFLINE))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class TaskSpec:
    """One packaged task: `name` is ours ("boolq"), `config` the lm-eval config (task name
    "seqedit_<name>", no data), `report` the metrics it yields, `primary` the one the no-signal
    rule reads, `chance` how its chance level is computed ("majority", "mc2", a number, None)."""

    name: str
    config: dict[str, Any]
    reader: str
    report: tuple[str, ...]
    primary: str
    chance: str | float | None

    @property
    def output_type(self) -> str:
        return self.config["output_type"]

    @property
    def higher_is_better(self) -> bool:
        return next(m.get("higher_is_better", True) for m in self.config["metric_list"]
                    if m["metric"] == self.primary)


def available_tasks() -> list[str]:
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def load_spec(name: str) -> TaskSpec:
    import yaml

    path = TASK_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown task {name!r}; packaged tasks: {available_tasks()}")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    ours = config.pop("seqedit", None) if isinstance(config, dict) else None
    if not isinstance(ours, dict) or "reader" not in ours or "report" not in ours:
        raise ValueError(f"{path}: needs a 'seqedit:' section with 'reader' and 'report'")
    for key in ("task", "output_type", "metric_list"):
        if key not in config:
            raise ValueError(f"{path}: missing lm-eval field {key!r}")
    if ours["reader"] not in FUNCTIONS:
        raise ValueError(f"{path}: unknown reader {ours['reader']!r}")
    report = tuple(ours["report"])
    listed = {m["metric"] for m in config["metric_list"]}
    if not set(report) <= listed:
        raise ValueError(f"{path}: reports {sorted(set(report) - listed)} not in metric_list")
    chance = ours.get("chance")
    chance = None if chance == "none" else chance
    return TaskSpec(name, _resolve(config, path), ours["reader"], report,
                    ours.get("primary", report[0]), chance)


def _resolve(value: Any, path: Path) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, path) for v in value]
    if isinstance(value, str) and value.startswith(_FUNCTION_PREFIX):
        name = value[len(_FUNCTION_PREFIX):]
        if name not in FUNCTIONS:
            raise ValueError(f"{path}: unknown function {value!r}")
        return FUNCTIONS[name]
    return value


def seeded_order(n: int, seed: int) -> list[int]:
    """0..n-1 in the order of sha256(seed, index): fixed across platforms and Python versions."""
    return sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())


def select(docs: list[dict], limit: int | None, seed: int) -> list[dict]:
    """The first `limit` documents of the seed's order, kept in file order; all when None."""
    if limit is None or limit >= len(docs):
        return list(docs)
    if limit < 1:
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    return [docs[i] for i in sorted(seeded_order(len(docs), seed)[:limit])]


def task_docs(spec: TaskSpec, limit: int | None, seed: int) -> list[dict]:
    docs = FUNCTIONS[spec.reader]()
    if not docs:
        raise ValueError(f"task {spec.name!r}: its reader {spec.reader!r} returned no documents")
    return select(docs, limit, seed)


def chance_level(spec: TaskSpec, docs: list[dict]) -> float | None:
    """What a constant answer scores on these documents: the best single-choice accuracy for
    "majority", the expected true mass of uniform choice probabilities for "mc2"."""
    if spec.chance is None or isinstance(spec.chance, (int, float)):
        return None if spec.chance is None else float(spec.chance)
    if spec.chance == "majority":
        return max(Counter(d["label"] for d in docs).values()) / len(docs)
    if spec.chance == "mc2":
        return sum(d["n_true"] / len(d["choices"]) for d in docs) / len(docs)
    raise ValueError(f"task {spec.name!r}: unknown chance rule {spec.chance!r}")


@dataclass
class TaskRun:
    """One task's result: `scores` metric → (value, stderr), `answers` per document (the chosen
    choice index for likelihood tasks, the generated text for generation tasks)."""

    spec: TaskSpec
    n: int
    scores: dict[str, tuple[float | None, float | None]]
    answers: list[Any]


def _lm_config(spec: TaskSpec, docs: list[dict]) -> dict[str, Any]:
    import datasets

    def custom_dataset(**_: Any) -> Any:
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})

    config = copy.copy(spec.config)
    config.update(custom_dataset=custom_dataset, test_split="test")
    return config


def run_tasks(model: torch.nn.Module, tokenizer: Any, specs: list[TaskSpec],
              docs: dict[str, list[dict]], *, seed: int, batch_size: int,
              max_length: int | None = None) -> dict[str, TaskRun]:
    """Every task in `specs` on `model` as it is now, on `docs[task]` (see `task_docs`), through
    one lm-eval call."""
    import time

    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from .harness_lm import SharedContextLM

    logger.info("lm-eval on %s", ", ".join(f"{s.name} ({len(docs[s.name])} docs)" for s in specs))
    start, was_training = time.perf_counter(), model.training
    try:
        with offline(), _no_environment_report():
            with _no_retie(model):
                lm = SharedContextLM(pretrained=model, tokenizer=tokenizer,
                                     batch_size=batch_size, max_length=max_length)
            # No response or request cache (an edited model is scored afresh); no reseeding of
            # the caller's global RNGs. bootstrap_iters > 0 only switches on the closed-form
            # stderr of means: no task here aggregates with a bootstrapped metric.
            out = simple_evaluate(
                model=lm, tasks=[_lm_config(s, docs[s.name]) for s in specs],
                task_manager=TaskManager(include_defaults=False), use_cache=None,
                cache_requests=False, log_samples=True, bootstrap_iters=1000,
                random_seed=None, numpy_random_seed=None, torch_random_seed=None,
                fewshot_random_seed=seed)
    finally:
        model.train(was_training)  # HFLM switches the model to eval mode
    seconds = time.perf_counter() - start
    runs = {}
    for spec in specs:
        key = spec.config["task"]
        results, samples = out["results"][key], out["samples"][key]
        scores = {m: (_number(results.get(f"{m},none")), _number(results.get(f"{m}_stderr,none")))
                  for m in spec.report}
        ordered = sorted(samples, key=lambda s: s["doc_id"])
        runs[spec.name] = TaskRun(spec, len(docs[spec.name]), scores,
                                  [_answer(spec, s) for s in ordered])
    logger.info("lm-eval done in %.1f s", seconds)
    return runs


@contextlib.contextmanager
def _no_environment_report() -> Iterator[None]:
    # simple_evaluate adds a report of the environment to its results, which seqedit drops: it
    # runs `git describe` in the working directory (printing "fatal: not a git repository" to
    # the terminal outside a checkout) and torch's collect_env subprocesses (≈ 2 s per call).
    import lm_eval.evaluator as evaluator

    saved = evaluator.get_git_commit_hash, evaluator.add_env_info
    evaluator.get_git_commit_hash, evaluator.add_env_info = (lambda: None), (lambda results: None)
    try:
        yield
    finally:
        evaluator.get_git_commit_hash, evaluator.add_env_info = saved


@contextlib.contextmanager
def _no_retie(model: torch.nn.Module) -> Iterator[None]:
    # HFLM calls model.tie_weights(); on a model whose config says "tied" but whose output
    # embedding an edit has made its own, that would overwrite the edited weights.
    own = model.__dict__.get("tie_weights")
    model.tie_weights = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if own is None:
            del model.tie_weights
        else:
            model.tie_weights = own


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" where it has no stderr
    return value if math.isfinite(value) else None


def _answer(spec: TaskSpec, sample: dict) -> Any:
    if spec.output_type == "multiple_choice":
        logls = [float(r[0]) for r in sample["filtered_resps"]]
        return max(range(len(logls)), key=logls.__getitem__)
    if spec.output_type == "generate_until":
        return str(sample["resps"][0][0])
    return None


def muting(answers: list[Any], threshold: float) -> dict[str, Any] | None:
    """How constant the answers are: the share of the most common answer (a choice index, or a
    generation with whitespace stripped), the share of empty generations, and `muted` when either
    exceeds `threshold`. None when the task has no discrete answers (perplexity)."""
    answers = [a.strip() if isinstance(a, str) else a for a in answers if a is not None]
    if not answers:
        return None
    top, count = Counter(answers).most_common(1)[0]
    modal = count / len(answers)
    empty = sum(a == "" for a in answers) / len(answers)
    return {"modal_share": modal, "modal_answer": top, "empty_share": empty,
            "muted": modal > threshold or empty > threshold}


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (names, dtypes, shapes, bytes)."""
    from .. import _tensor_hash

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        _tensor_hash.update(digest, tensor, _tensor_hash.named_header(name, tensor))
    return digest.hexdigest()


def cache_dir(given: Path | None) -> Path:
    from .._cache_root import cache_root

    return Path(given) if given is not None else cache_root() / "eval"


def cache_key(model_fingerprint: str, evaluator: str, payload: dict[str, Any]) -> str:
    from .._version import __version__

    text = json.dumps({"weights": model_fingerprint, "evaluator": evaluator, "seqedit": __version__,
                       "harness": HARNESS, **payload}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_cached(directory: Path, key: str) -> dict[str, Any] | None:
    path = directory / f"{key}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def store_cached(directory: Path, key: str, data: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)  # atomic, so a concurrent reader never sees half a file
