"""`load`: named packaged datasets or files in any supported schema → validated `EditRequest`s.

Loading is all or nothing. Every record is converted (never raising, see `schemas`) and the
result goes through `validate` without a tokenizer; if any record is bad, `load` raises one
`RequestValidationError` that names every bad record and field, and returns nothing. Problems
of the file itself (unreadable JSON, not an array, no recognisable schema) raise `ValueError`.
Token-length checks need the model, so callers run `validate(requests, tokenizer=...)` later.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ._io import RECORD_SUFFIXES, has_record_suffix, packaged, read_records
from .request import EditRequest
from .schemas import SCHEMAS, describe_schemas, schema_of
from .validate import RequestValidationError, validate


@dataclass(frozen=True)
class Dataset:
    splits: tuple[tuple[str, str], ...]  # (split, file under seqedit/data/files/)
    default_split: str


DATASETS: Mapping[str, Dataset] = MappingProxyType({
    "counterfact": Dataset((("edit", "counterfact-edit.json.gz"),
                            ("train", "counterfact-train.json.gz")), "edit"),
    "counterfact-train": Dataset((("train", "counterfact-train.json.gz"),), "train"),
    "zsre": Dataset((("eval", "zsre_mend_eval_portability_gpt4.json.gz"),), "eval"),
    "mquake": Dataset((("hard", "MQuAKE-hard.json.gz"),), "hard"),
})


def available() -> dict[str, tuple[str, ...]]:
    """Packaged dataset names and their splits (the first is the default)."""
    return {name: tuple(sorted((s for s, _ in d.splits), key=lambda s: s != d.default_split))
            for name, d in DATASETS.items()}


def _unknown_name(name: str) -> ValueError:
    return ValueError(f"unknown dataset {name!r}: known names are {', '.join(sorted(DATASETS))};"
                      f" or give a path to a {', '.join(RECORD_SUFFIXES)} file")


def _resolve(name_or_path: str | os.PathLike[str], split: str | None) -> tuple[Any, str]:
    """(readable source, label for messages)."""
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        dataset = DATASETS[name_or_path]
        files = dict(dataset.splits)
        chosen = dataset.default_split if split is None else split
        if chosen not in files:
            raise ValueError(f"dataset {name_or_path!r} has split(s) {', '.join(files)}; "
                             f"got {split!r}")
        return packaged(files[chosen]), f"{name_or_path} ({chosen} split)"
    path = Path(name_or_path)
    if not path.exists():
        looks_like_path = (isinstance(name_or_path, os.PathLike) or has_record_suffix(path.name)
                           or os.sep in str(name_or_path))
        if looks_like_path:
            raise FileNotFoundError(f"no such file: {str(path)!r}")
        raise _unknown_name(str(name_or_path))
    if split is not None:
        raise ValueError(f"split={split!r} applies to named datasets only, not to a path")
    return path, str(path)


def _detect(records: list[Any], label: str) -> str:
    # A majority vote, so that one damaged record does not hide the schema of the others;
    # records that do not fit it are then reported field by field by validate().
    votes = Counter(name for name in map(schema_of, records) if name is not None)
    if votes:
        return votes.most_common(1)[0][0]
    first = records[0]
    found = (f"has keys {sorted(first)}" if isinstance(first, Mapping)
             else f"is a {type(first).__name__}, not an object")
    raise ValueError(f"{label}: unrecognised record schema; the first record {found}; "
                     f"expected one of: {describe_schemas()}")


def load(name_or_path: str | os.PathLike[str], *, split: str | None = None,
         limit: int | None = None) -> list[EditRequest]:
    """Edit requests from a packaged dataset ("counterfact", "counterfact-train", "zsre",
    "mquake"; see `available()`) or from a .json / .jsonl / .json.gz / .jsonl.gz file in any
    schema of `seqedit.data.schemas`, detected from the records' keys.

    `limit` keeps the first N requests in file order (for MQuAKE, a case gives several).
    Raises `RequestValidationError` listing every bad record; nothing is returned partially.
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"expected a dataset name or a path, got {type(name_or_path).__name__} "
                         f"{name_or_path!r:.80}")
    if split is not None and not isinstance(split, str):
        raise ValueError(f"split must be a string or None, got {split!r:.80}")
    source, label = _resolve(name_or_path, split)
    records = read_records(source, label)
    if not records:
        return []
    convert = SCHEMAS[_detect(records, label)].convert
    requests: list[EditRequest] = []
    for position, record in enumerate(records):
        if limit is not None and len(requests) >= limit:
            break
        if isinstance(record, Mapping):
            requests.extend(convert(record, position))
        else:  # one "not an object" problem, instead of one per field the schema expects
            requests.append(EditRequest.from_dict(record))
    requests = requests[:limit]
    try:
        validate(requests)
    except RequestValidationError as err:
        raise RequestValidationError(err.problems, total=len(requests), source=label) from None
    return requests
