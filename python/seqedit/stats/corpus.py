"""Documents → a deterministic list of right-padded token batches.

Everything here is a pure function of (documents, tokenizer, max_tokens, max_length, batch_tokens),
which is what makes the cache key meaningful and a resumed run identical to an uninterrupted one.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

# Fields tried, in order, when a JSON record is an object rather than a plain string.
TEXT_FIELDS = ("text", "content", "extract")
# Documents tokenized per tokenizer call while filling the budget.
_TOKENIZE_CHUNK = 64


@dataclass(frozen=True)
class Batch:
    """Documents (int32 token ids, longest first) that go through the model together."""

    rows: tuple[torch.Tensor, ...]

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.rows]

    @property
    def tokens(self) -> int:
        return sum(len(r) for r in self.rows)

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded `input_ids` and `attention_mask`, both [B, T] int64.

        The pad id is irrelevant: padding sits right of every real token, is masked out of
        attention and its keys are never accumulated; 0 is valid in every vocabulary.
        """
        t = len(self.rows[0])
        ids = torch.zeros(len(self.rows), t, dtype=torch.long)
        mask = torch.zeros(len(self.rows), t, dtype=torch.long)
        for r, row in enumerate(self.rows):
            ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
        return ids, mask


def resolve(corpus: Any) -> list[str]:
    """`None` → packaged corpus; a list of strings; a file path; or a packaged corpus name."""
    if corpus is None:
        from seqedit import data

        return _checked(data.corpus("wikipedia_vital"), "seqedit.data.corpus('wikipedia_vital')")
    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        if path.is_file():
            return _checked(read_file(path), str(path))
        if isinstance(corpus, str) and not any(c in corpus for c in "/\\.") and corpus:
            from seqedit import data

            return _checked(data.corpus(corpus), f"seqedit.data.corpus({corpus!r})")
        raise FileNotFoundError(f"corpus {str(corpus)!r}: no such file (and not a packaged corpus name)")
    if isinstance(corpus, Sequence):
        return _checked(list(corpus), "the corpus list")
    raise TypeError(
        f"corpus must be None, a list of strings or a path to a .txt/.jsonl/.json(.gz) file, "
        f"got {type(corpus).__name__}"
    )


def read_file(path: Path) -> list[str]:
    """.txt: one document per non-empty line; .jsonl: one record per line; .json: a list of
    records or an object whose values are records. A record is a string or an object with one of
    TEXT_FIELDS. Any of them may be gzipped (.gz)."""
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    stem = name[:-3] if name.endswith(".gz") else name
    with opener(path, "rt", encoding="utf-8") as f:
        if stem.endswith(".txt"):
            return [line.strip() for line in f if line.strip()]
        if stem.endswith(".jsonl"):
            return [_record_text(json.loads(line), path, i) for i, line in enumerate(f) if line.strip()]
        if stem.endswith(".json"):
            obj = json.load(f)
            records = list(obj.values()) if isinstance(obj, dict) else obj
            if not isinstance(records, list):
                raise ValueError(f"{path}: expected a JSON list or object of records")
            return [_record_text(r, path, i) for i, r in enumerate(records)]
    raise ValueError(f"{path}: unsupported corpus file type (use .txt, .jsonl or .json, optionally .gz)")


def _record_text(record: Any, path: Path, index: int) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for field in TEXT_FIELDS:
            if isinstance(record.get(field), str):
                return record[field]
    raise ValueError(f"{path}: record {index} is neither a string nor an object with one of {TEXT_FIELDS}")


def _checked(docs: list, where: str) -> list[str]:
    bad = [i for i, d in enumerate(docs) if not isinstance(d, str)]
    if bad:
        raise TypeError(f"{where}: documents must be strings; items {bad[:5]} are not")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"{where}: no non-empty documents")
    return docs


def content_hash(docs: Sequence[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        b = d.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def select(docs: Sequence[str], tokenizer: Any, max_tokens: int, max_length: int) -> list[torch.Tensor]:
    """Token ids of the documents that fill `max_tokens` exactly (unless the corpus runs out).

    Documents are visited in the order of a hash of their text rather than the given order, so a
    small budget samples the whole corpus (the packaged one is sorted by title) and the result
    does not depend on how the list was ordered. The last document is cut to fit: keys of a
    prefix are exactly those of the full document under causal attention.
    """
    order = sorted(range(len(docs)), key=lambda i: (hashlib.blake2b(docs[i].encode(), digest_size=8).digest(), i))
    chosen: list[torch.Tensor] = []  # int32: a Python int list costs ~36 bytes a token
    total = 0
    for start in range(0, len(order), _TOKENIZE_CHUNK):
        texts = [docs[i] for i in order[start : start + _TOKENIZE_CHUNK]]
        enc = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)
        for ids in enc["input_ids"]:
            ids = list(ids)[: max_tokens - total]
            if ids:
                chosen.append(torch.tensor(ids, dtype=torch.int32))
                total += len(ids)
            if total == max_tokens:
                return chosen
    return chosen


def pack(docs: Sequence[torch.Tensor], batch_tokens: int) -> list[Batch]:
    """Longest-first batches whose padded size B·T stays within `batch_tokens`.

    Sorting by length keeps padding small; longest first makes an out-of-memory batch fail at the
    start instead of minutes in. Ties keep selection order, so the plan is deterministic.
    """
    order = sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i))
    batches: list[Batch] = []
    group: list[int] = []
    for i in order:
        if group and (len(group) + 1) * len(docs[group[0]]) > batch_tokens:
            batches.append(Batch(tuple(docs[j] for j in group)))
            group = []
        group.append(i)
    if group:
        batches.append(Batch(tuple(docs[j] for j in group)))
    return batches

