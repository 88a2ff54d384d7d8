"""Check edit requests before anything touches a model; report every problem in one error.

Rules (each failure is one `Problem` naming the record's index, its case_id and the field):

* `prompt`, `subject`, `target_new`: present, strings, not empty after stripping whitespace.
  `target_true`: None or such a string. `subject` has no leading or trailing whitespace (it would
  double the spaces of the filled prompt and move the subject's last token).
  Every string (these, the prompts and answers below, a string `case_id`) is valid Unicode: a
  lone surrogate such as JSON's "\\ud800" would make the tokenizer raise later.
* `prompt` holds exactly one `{}`. A prompt with none means the subject was not found when the
  record was built (see `seqedit.data.request` for the matching rule); that is reported on
  `subject`.
* `target_new` differs from `target_true` after stripping whitespace and case folding: targets
  that differ only in case name the same answer for the metrics, so such an edit is a no-op.
* `paraphrase_prompts`: a sequence of non-empty strings, already filled (no `{}`).
  `neighborhood_prompts`: a sequence of `(prompt, answer)` pairs of non-empty strings.
* `case_id`: int, str or None; no two records share one. Ids are compared as text, so `7` and
  `"7"` collide (they would in any ledger or report keyed by id).
* With a tokenizer: every filled prompt (main, paraphrases, neighbours) followed by each of its
  targets, as the model sees `f"{prompt} {target}"` with special tokens, fits in `max_length`
  tokens. Editors that add context around the prompt should pass a `max_length` that leaves
  room for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from .request import EditRequest, Missing

MESSAGE_LINES = 50  # beyond this the message is cut; `.problems` always has everything
_SANE_CONTEXT = 1 << 22  # transformers uses ~1e30 for "unknown model_max_length"


class Problem(NamedTuple):
    index: int
    case_id: Any
    field: str
    message: str

    def __str__(self) -> str:
        who = f"record {self.index}"
        if self.case_id is not None:
            who += f" (case_id={self.case_id!r})"
        return f"{who}: field '{self.field}': {self.message}"


class RequestValidationError(ValueError):
    """All problems found in a list of edit requests; `.problems` is complete."""

    def __init__(self, problems: Sequence[Problem], total: int | None = None,
                 source: str | None = None) -> None:
        self.problems = [Problem(*p) for p in problems]
        self.total, self.source = total, source
        bad = len({p.index for p in self.problems})
        head = f"{len(self.problems)} problem(s) in {bad}"
        head += f" of {total} edit request(s)" if total is not None else " edit request(s)"
        head += f" from {source}" if source else ""
        lines = [str(p) for p in self.problems[:MESSAGE_LINES]]
        if len(self.problems) > MESSAGE_LINES:
            lines.append(f"... and {len(self.problems) - MESSAGE_LINES} more")
        super().__init__("\n".join([head + ":", *lines]))

    def __reduce__(self):
        # The default would call the class with the message alone; keep the problems instead,
        # so the error survives a trip between processes.
        return type(self), (self.problems, self.total, self.source)


def _short(text: Any, width: int = 70) -> str:
    shown = repr(text)
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def _got(value: Any) -> str:
    return f"got {type(value).__name__} {_short(value)}"


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _surrogate_at(text: str) -> int | None:
    """Where `text` holds a lone surrogate (JSON's "\\ud800" decodes to one), or None.

    Such a string is not Unicode text: tokenizers and UTF-8 writers raise on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start
    return None


def _is_clean_text(value: Any) -> bool:
    return _is_text(value) and _surrogate_at(value) is None


def _not_unicode(text: str, at: int) -> str:
    return (f"not valid Unicode text: lone surrogate U+{ord(text[at]):04X} at position {at}: "
            f"{_short(text)}")


def _string(field: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, Missing):
        yield field, f"missing ({value.source})"
    elif not isinstance(value, str):
        yield field, f"expected a string, {_got(value)}"
    elif not value.strip():
        yield field, f"empty: {_short(value)}"
    elif (at := _surrogate_at(value)) is not None:
        yield field, _not_unicode(value, at)


def _check(req: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(req, EditRequest):
        yield "*", f"expected an EditRequest, {_got(req)} (build one with EditRequest.from_dict)"
        return
    if isinstance(req.prompt, Missing) and req.subject is req.prompt \
            and req.target_new is req.prompt:
        yield "*", f"unusable record: {req.prompt.source}"  # one line, not one per field
        return
    yield from _string("prompt", req.prompt)
    yield from _string("subject", req.subject)
    if _is_text(req.prompt):
        holes = req.prompt.count("{}")
        if holes == 0 and _is_text(req.subject):
            yield "subject", f"{_short(req.subject)} not found in prompt {_short(req.prompt)}"
        elif holes == 0:
            yield "prompt", f"has no '{{}}' for the subject: {_short(req.prompt)}"
        elif holes > 1:
            yield "prompt", f"expected exactly one '{{}}', found {holes}: {_short(req.prompt)}"
    if _is_text(req.subject) and req.subject != req.subject.strip():
        yield "subject", f"has leading or trailing whitespace: {_short(req.subject)}"
    yield from _string("target_new", req.target_new)
    if req.target_true is not None:
        yield from _string("target_true", req.target_true)
    if _is_text(req.target_new) and _is_text(req.target_true):
        if req.target_new.strip().casefold() == req.target_true.strip().casefold():
            yield "target_new", f"same as target_true ({_short(req.target_true)}): nothing to edit"
    yield from _check_paraphrases(req.paraphrase_prompts)
    yield from _check_neighbours(req.neighborhood_prompts)
    if req.case_id is not None and (isinstance(req.case_id, bool)
                                    or not isinstance(req.case_id, (int, str))):
        yield "case_id", f"expected an int, a string or None, {_got(req.case_id)}"
    elif isinstance(req.case_id, str) and (at := _surrogate_at(req.case_id)) is not None:
        yield "case_id", _not_unicode(req.case_id, at)


def _not_a_sequence(field: str, value: Any, expected: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, Missing):
        yield field, f"missing ({value.source})"
    elif not isinstance(value, tuple):
        yield field, f"expected {expected}, {_got(value)}"


def _check_paraphrases(value: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(value, tuple):
        yield from _not_a_sequence("paraphrase_prompts", value, "a list of strings")
        return
    for i, text in enumerate(value):
        yield from _string(f"paraphrase_prompts[{i}]", text)
        if isinstance(text, str) and "{}" in text:
            yield f"paraphrase_prompts[{i}]", f"contains '{{}}'; give it filled: {_short(text)}"


def _check_neighbours(value: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(value, tuple):
        yield from _not_a_sequence("neighborhood_prompts", value,
                                   "a list of (prompt, answer) pairs")
        return
    for i, pair in enumerate(value):
        if isinstance(pair, tuple) and len(pair) == 2:
            yield from _string(f"neighborhood_prompts[{i}].prompt", pair[0])
            yield from _string(f"neighborhood_prompts[{i}].answer", pair[1])
        else:
            yield f"neighborhood_prompts[{i}]", f"expected a (prompt, answer) pair, {_got(pair)}"


def _duplicates(requests: Sequence[Any]) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for i, req in enumerate(requests):
        case_id = getattr(req, "case_id", None)
        if isinstance(case_id, (int, str)) and not isinstance(case_id, bool):
            seen = first.setdefault(str(case_id), i)
            if seen != i:
                yield Problem(i, case_id, "case_id", f"duplicate of record {seen}")


def _scored_texts(req: Any) -> Iterator[tuple[str, str]]:
    """(field, prompt + target) for every well-formed piece of a record: a piece that is not
    valid text is already a problem, and a tokenizer would raise on it."""
    if not isinstance(req, EditRequest):
        return
    targets = [t for t in (req.target_new, req.target_true) if _is_clean_text(t)]
    prompts = []
    if _is_clean_text(req.prompt) and _is_clean_text(req.subject) and req.prompt.count("{}") == 1:
        prompts.append(("prompt", req.filled_prompt))
    if isinstance(req.paraphrase_prompts, tuple):
        prompts += [(f"paraphrase_prompts[{i}]", p)
                    for i, p in enumerate(req.paraphrase_prompts) if _is_clean_text(p)]
    for field, prompt in prompts:
        for target in targets:
            yield field, f"{prompt.rstrip()} {target.strip()}"
    if isinstance(req.neighborhood_prompts, tuple):
        for i, pair in enumerate(req.neighborhood_prompts):
            if isinstance(pair, tuple) and len(pair) == 2 and all(map(_is_clean_text, pair)):
                yield f"neighborhood_prompts[{i}]", f"{pair[0].rstrip()} {pair[1].strip()}"


def _token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    if not texts:
        return []
    if hasattr(tokenizer, "encode_batch"):  # a `tokenizers.Tokenizer`
        return [len(enc.ids) for enc in tokenizer.encode_batch(texts)]
    if hasattr(tokenizer, "model_max_length") and callable(tokenizer):  # transformers: batched
        return [len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]
    counts = []
    for text in texts:
        ids = tokenizer.encode(text)
        counts.append(len(getattr(ids, "ids", ids)))
    return counts


def _resolve_max_length(tokenizer: Any, max_length: int | None) -> int | None:
    if tokenizer is None:
        if max_length is not None:
            raise ValueError("max_length needs a tokenizer to count tokens with")
        return None
    if max_length is None:
        max_length = getattr(tokenizer, "model_max_length", None)
        if not (isinstance(max_length, int) and 0 < max_length <= _SANE_CONTEXT):
            raise ValueError(
                f"pass max_length: the tokenizer does not state a usable context length "
                f"(model_max_length={max_length!r})"
            )
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    return max_length


def _too_long(requests: Sequence[Any], tokenizer: Any, max_length: int) -> Iterator[Problem]:
    where, texts = [], []
    for i, req in enumerate(requests):
        for field, text in _scored_texts(req):
            where.append((i, field))
            texts.append(text)
    longest: dict[tuple[int, str], tuple[int, str]] = {}
    for key, text, count in zip(where, texts, _token_counts(tokenizer, texts)):
        if count > longest.get(key, (-1, ""))[0]:
            longest[key] = (count, text)
    for (i, field), (count, text) in longest.items():
        if count > max_length:
            yield Problem(i, requests[i].case_id, field,
                          f"{count} tokens with its target, over max_length {max_length}: "
                          f"{_short(text)}")


def validate(requests: Iterable[EditRequest], *, tokenizer: Any = None,
             max_length: int | None = None) -> Sequence[EditRequest]:
    """Return `requests` unchanged if every rule in the module doc holds, else raise one
    `RequestValidationError` listing every problem.

    `tokenizer` may be a transformers tokenizer, a `tokenizers.Tokenizer`, or any object whose
    `encode(text)` returns the token ids. `max_length` defaults to the tokenizer's
    `model_max_length`; pass the model's context length when it is smaller or unset.
    """
    if not isinstance(requests, (list, tuple)):
        requests = list(requests)
    limit = _resolve_max_length(tokenizer, max_length)
    problems = [Problem(i, getattr(req, "case_id", None), field, message)
                for i, req in enumerate(requests) for field, message in _check(req)]
    problems += _duplicates(requests)
    if limit is not None:
        problems += _too_long(requests, tokenizer, limit)
    if problems:
        problems.sort(key=lambda p: p.index)  # stable: per record, checks keep their order
        raise RequestValidationError(problems, total=len(requests))
    return requests
