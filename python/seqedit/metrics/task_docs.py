"""Documents of the packaged evaluation tasks, and the scoring functions their configs name.

Each reader turns one packaged file into flat dicts that a task's prompt templates can fill, with
an integer `label` (the gold choice) wherever the task is a choice task, so chance levels and
constant-answer rates are computed from the very documents evaluated. A reader raises ValueError
naming the file and the field it could not use. The task configs (`tasks/*.yaml`) name readers
and functions as `seqedit:<name>`; `FUNCTIONS` is that table.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..data._io import read_records, read_text

DATA_DIR = Path(__file__).parent / "tasks" / "data"
_LETTERS = "ABCDE"


def data_file(relative: str) -> Path:
    path = DATA_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(f"packaged evaluation data {relative!r} is missing from {DATA_DIR}"
                                " (a broken install?)")
    return path


def _need(record: dict, key: str, where: str, kind: type | tuple = object) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    if not isinstance(record[key], kind):
        raise ValueError(f"{where}: field {key!r} is {type(record[key]).__name__}, "
                         f"expected {kind}")
    return record[key]


def _records(relative: str) -> list[tuple[str, dict]]:
    rows = read_records(data_file(relative), relative)
    return [(f"{relative} record {i}", r) for i, r in enumerate(rows)]


def _csv_rows(relative: str, delimiter: str = ",") -> list[tuple[str, dict]]:
    text = read_text(data_file(relative))
    rows = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    return [(f"{relative} row {i + 2}", row) for i, row in enumerate(rows)]


def _label(value: Any, where: str, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise ValueError(f"{where}: label {value!r} is not an int in [0, {n})")
    return value


def wikitext(**_: Any) -> list[dict]:
    from ..data import corpus  # the packaged WikiText-2 test split, one string per article
    return [{"page": text} for text in corpus("wikitext-2")]


def boolq(**_: Any) -> list[dict]:
    return [{"passage": _need(r, "passage", w, str), "question": _need(r, "question", w, str),
             "label": int(_need(r, "answer", w, bool))}
            for w, r in _records("boolq/dev.jsonl.gz")]


def _glue(name: str, fields: tuple[str, ...]) -> list[dict]:
    docs = []
    for where, r in _records(f"glue/{name}.jsonl.gz"):
        doc = {f: _need(r, f, where, str) for f in fields}
        doc["label"] = _label(_need(r, "label", where), where, 2)
        docs.append(doc)
    return docs


def sst2(**_: Any) -> list[dict]:
    return _glue("sst2", ("sentence",))


def cola(**_: Any) -> list[dict]:
    return _glue("cola", ("sentence",))


def mrpc(**_: Any) -> list[dict]:
    return _glue("mrpc", ("sentence1", "sentence2"))


def rte(**_: Any) -> list[dict]:
    return _glue("rte", ("sentence1", "sentence2"))


def mmlu(**_: Any) -> list[dict]:
    docs = []
    for where, r in _records("glue/mmlu.jsonl.gz"):
        choices = _need(r, "choices", where, list)
        if len(choices) != 4 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: field 'choices' must hold 4 strings")
        docs.append({"subject": _need(r, "subject", where, str).replace("_", " "),
                     "question": _need(r, "question", where, str).strip(),
                     "choices": choices, "label": _label(_need(r, "answer", where), where, 4)})
    return docs


def commonsenseqa(**_: Any) -> list[dict]:
    docs = []
    for where, r in _records("commonsenseqa/dev_rand_split.jsonl.gz"):
        q = _need(r, "question", where, dict)
        choices = _need(q, "choices", where, list)
        labels = [c.get("label") for c in choices if isinstance(c, dict)]
        if labels != list(_LETTERS[:len(choices)]):
            raise ValueError(f"{where}: choices are labelled {labels}, expected A-E in order")
        key = _need(r, "answerKey", where, str)
        if key not in labels:
            raise ValueError(f"{where}: answerKey {key!r} is not one of {labels}")
        docs.append({"question": _need(q, "stem", where, str),
                     "choices": [_need(c, "text", where, str) for c in choices],
                     "label": labels.index(key)})
    return docs


def gsm8k(**_: Any) -> list[dict]:
    docs = []
    for where, r in _records("gsm8k/test.jsonl.gz"):
        answer = _need(r, "answer", where, str)
        rationale, sep, number = answer.rpartition("####")
        if not sep:
            raise ValueError(f"{where}: field 'answer' has no '#### <number>' line")
        docs.append({"question": _need(r, "question", where, str), "rationale": rationale.strip(),
                     "target": number.strip().replace(",", "")})
    return docs


def prune_nli(**_: Any) -> list[dict]:
    names = ("entailment", "not_entailment")
    docs = []
    for where, r in _csv_rows("prune/test-NLI.tsv.gz", delimiter="\t"):
        label = _need(r, "label", where, str)
        if label not in names:
            raise ValueError(f"{where}: label {label!r} is not one of {names}")
        docs.append({"sentence1": _need(r, "sentence1", where, str),
                     "sentence2": _need(r, "sentence2", where, str), "label": names.index(label)})
    return docs


def _answers(cell: str) -> list[str]:
    out: list[str] = []
    for part in cell.split(";"):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return out


def _truthfulqa_rows() -> list[tuple[str, str, str, list[str], list[str]]]:
    rows = []
    for where, r in _csv_rows("truthfulqa/TruthfulQA.csv.gz"):
        question, best = _need(r, "Question", where, str), _need(r, "Best Answer", where, str)
        correct = _answers(_need(r, "Correct Answers", where, str))
        incorrect = _answers(_need(r, "Incorrect Answers", where, str))
        if not best.strip() or not incorrect:
            raise ValueError(f"{where}: needs a 'Best Answer' and at least one 'Incorrect Answers'")
        rows.append((where, question, best.strip(), correct, incorrect))
    return rows


def _position(key: str, n: int) -> int:
    # Where the right answer sits depends on the question text only: stable everywhere, and not
    # always first, so a model that always picks one position cannot score well (lm-eval's MC1
    # keeps it at index 0).
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n


def truthfulqa_mc1(**_: Any) -> list[dict]:
    docs = []
    for _where, question, best, _correct, incorrect in _truthfulqa_rows():
        wrong = [a for a in incorrect if a != best]
        at = _position(question, len(wrong) + 1)
        docs.append({"question": question, "choices": wrong[:at] + [best] + wrong[at:],
                     "label": at})
    return docs


def truthfulqa_mc2(**_: Any) -> list[dict]:
    docs = []
    for _where, question, best, correct, incorrect in _truthfulqa_rows():
        true = [best] + [a for a in correct if a != best]
        false = [a for a in incorrect if a not in true]
        docs.append({"question": question, "choices": true + false, "n_true": len(true),
                     "label": 0})
    return docs


_TOXIGEN_FILE = re.compile(r"^(hate|neutral)_(.+)_1k\.txt\.gz$")


def toxigen(**_: Any) -> list[dict]:
    docs = []
    for path in sorted(DATA_DIR.joinpath("toxigen").glob("*.txt.gz")):
        match = _TOXIGEN_FILE.match(path.name)
        if match is None:
            raise ValueError(f"toxigen/{path.name}: expected hate_<group>_1k / neutral_<group>_1k")
        seen: set[str] = set()
        # Each prompt line lists demonstration statements joined by a literal backslash-n; the
        # statements of one file share its label, and prompts overlap, so keep each one once.
        for line in read_text(path).splitlines():
            for part in line.split("\\n"):
                text = part.strip().removeprefix("-").strip()
                if text and text not in seen:
                    seen.add(text)
                    docs.append({"text": text, "group": match.group(2).replace("_", " "),
                                 "label": int(match.group(1) == "hate")})
    if not docs:
        raise FileNotFoundError(f"no ToxiGen prompt files under {DATA_DIR / 'toxigen'}")
    return docs


def advbench(**_: Any) -> list[dict]:
    return [{"goal": _need(r, "goal", w, str)} for w, r in
            _csv_rows("advbench/harmful_behaviors.csv.gz")]


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


def gsm8k_last_number(doc: dict, results: list[str]) -> dict:
    # The last number in the generation is the answer (lm-eval's "flexible-extract"), compared
    # as a number so "18", "18.00" and "1,8"-free forms agree.
    numbers = _NUMBER.findall(results[0])
    got = _as_number(numbers[-1]) if numbers else None
    return {"exact_match": float(got is not None and got == _as_number(doc["target"]))}


def prune_gold_substring(doc: dict, results: list[str]) -> dict:
    # PRUNE's rule: correct when the gold number appears anywhere in the (5-token) output.
    return {"acc": float(doc["target"] in results[0])}


def prune_true_false(doc: dict, results: list[str]) -> dict:
    text = results[0].lower()
    said = 0 if "true" in text else 1 if "false" in text else None
    return {"acc": (said == doc["label"], said is not None), "parsed": float(said is not None)}


def parsed_accuracy(items: list[tuple[bool, bool]]) -> float:
    # PRUNE divides by the answers that said true or false, not by all items.
    parsed = [correct for correct, ok in items if ok]
    return sum(parsed) / len(parsed) if parsed else float("nan")


def mc2_true_mass(doc: dict, results: list[tuple[float, bool]]) -> dict:
    import math
    logls = [ll for ll, _ in results]
    top = max(logls)
    mass = [math.exp(ll - top) for ll in logls]
    return {"mc2": sum(mass[:doc["n_true"]]) / sum(mass)}


FUNCTIONS: MappingProxyType[str, Callable[..., Any]] = MappingProxyType({
    f.__name__: f for f in (
        wikitext, boolq, sst2, cola, mrpc, rte, mmlu, commonsenseqa, gsm8k, prune_nli,
        truthfulqa_mc1, truthfulqa_mc2, toxigen, advbench, gsm8k_last_number,
        prune_gold_substring, prune_true_false, parsed_accuracy, mc2_true_mass)})
