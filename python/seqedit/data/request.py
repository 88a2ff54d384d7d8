"""`EditRequest`: one fact to write into a model.

Construction never raises for content problems (wrong types, missing fields, a subject that is
not in the prompt): the record keeps what it was given and `seqedit.data.validate` reports every
problem of every record at once, so a user fixes a data file in one pass instead of one error at
a time.

Text normalisation (applied at construction):

* Every string field is stored in Unicode NFC, so canonically equivalent inputs give equal records
  and the same tokens.
* A prompt without `{}` is taken to be already filled. The subject is then searched for in it and
  the match is replaced by `{}`. The search treats any run of whitespace in the subject as
  matching any run of whitespace in the prompt and ignores whitespace around the subject. It
  tries, in order, case-sensitive matches that stand as whole words (not inside a longer word),
  then any case-sensitive match, then the same two case-insensitively; the first (leftmost)
  match of the first rule that finds one wins. When the match is not character-for-character
  the subject, `subject` is set to the text as it appears in the prompt, so that `filled_prompt`
  reproduces the given prompt exactly and the subject is always a substring of it.
* A prompt that already contains `{}` is kept as is.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Missing:
    """Stands in for a field the source record did not have; `validate` reports it.

    `source` names what was looked for (e.g. "key 'requested_rewrite.subject'") so the error
    message points at the source file's own field names.
    """

    source: str

    def __repr__(self) -> str:
        return f"<missing: {self.source}>"


def _nfc(value: Any) -> Any:
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


# Whitespace other than single spaces; without it the whitespace-flexible match is a plain find.
_IRREGULAR_SPACE = re.compile(r"\s{2,}|[^\S ]")


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"  # what `\w` means for str patterns


def _find_case_sensitive(prompt: str, subject: str) -> tuple[int, int] | None:
    """Rules 1 and 2 (whole word, then anywhere) with str.find: compiling four regexes per
    record made loading CounterFact take seconds."""
    first = prompt.find(subject)
    start = first
    while start >= 0:
        end = start + len(subject)
        open_head = not (_is_word_char(subject[0]) and start > 0
                         and _is_word_char(prompt[start - 1]))
        open_tail = not (_is_word_char(subject[-1]) and end < len(prompt)
                         and _is_word_char(prompt[end]))
        if open_head and open_tail:
            return start, end
        start = prompt.find(subject, start + 1)
    return None if first < 0 else (first, first + len(subject))


def _subject_patterns(subject: str, flags: tuple[int, ...]) -> list[re.Pattern[str]]:
    words = subject.split()
    core = r"\s+".join(re.escape(w) for w in words)
    # Guard only edges that are word characters: "C++" has no word end to protect.
    head = r"(?<!\w)" if _is_word_char(words[0][0]) else ""
    tail = r"(?!\w)" if _is_word_char(words[-1][-1]) else ""
    return [re.compile(p, f) for f in flags for p in (head + core + tail, core)]


def locate_subject(prompt: str, subject: str) -> tuple[int, int] | None:
    """Span `(start, end)` of the subject in a filled prompt by the rule in the module doc."""
    subject = subject.strip()
    if not subject:
        return None
    flags: tuple[int, ...] = (0, re.IGNORECASE)
    if not (_IRREGULAR_SPACE.search(subject) or _IRREGULAR_SPACE.search(prompt)):
        span = _find_case_sensitive(prompt, subject)
        if span is not None:
            return span
        flags = (re.IGNORECASE,)  # the case-sensitive patterns would find nothing either
    for pattern in _subject_patterns(subject, flags):
        match = pattern.search(prompt)
        if match:
            return match.span()
    return None


def _as_tuple(value: Any) -> Any:
    # Lists become tuples so records stay hashable; anything else (a lone string, a number) is
    # kept so that validate() can name the mistake instead of us guessing what was meant.
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _pair(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (_nfc(value[0]), _nfc(value[1]))
    return value


@dataclass(frozen=True)
class EditRequest:
    """One edit: make the model complete `prompt` (subject filled in) with `target_new`.

    `paraphrase_prompts` are filled prompts that should also yield `target_new` after the edit;
    `neighborhood_prompts` are `(filled prompt, expected answer)` pairs the edit must not change.
    `target_true` is the answer being replaced, or None when unknown.
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[tuple[str, str], ...] = ()
    case_id: int | str | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__  # the dataclass is frozen; normalising here is the one exception
        prompt, subject = _nfc(self.prompt), _nfc(self.subject)
        if isinstance(prompt, str) and isinstance(subject, str) and "{}" not in prompt:
            span = locate_subject(prompt, subject)
            if span is not None:
                start, end = span
                prompt, subject = prompt[:start] + "{}" + prompt[end:], prompt[start:end]
        put(self, "prompt", prompt)
        put(self, "subject", subject)
        put(self, "target_new", _nfc(self.target_new))
        put(self, "target_true", _nfc(self.target_true))
        paraphrases = _as_tuple(self.paraphrase_prompts)
        if isinstance(paraphrases, tuple):
            paraphrases = tuple(_nfc(p) for p in paraphrases)
        put(self, "paraphrase_prompts", paraphrases)
        neighbours = _as_tuple(self.neighborhood_prompts)
        if isinstance(neighbours, tuple):
            neighbours = tuple(_pair(n) for n in neighbours)
        put(self, "neighborhood_prompts", neighbours)

    @property
    def filled_prompt(self) -> str:
        """The prompt with the subject in place of `{}`."""
        if not (isinstance(self.prompt, str) and isinstance(self.subject, str)):
            raise TypeError(
                f"EditRequest(case_id={self.case_id!r}) has non-string prompt or subject; "
                "run seqedit.data.validate() on it to see why"
            )
        # str.replace, not str.format: prompts may contain other braces ("f(x) = {x}").
        return self.prompt.replace("{}", self.subject, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; `from_dict(r.to_dict()) == r`. Missing fields are left out."""
        out: dict[str, Any] = {
            "case_id": self.case_id,
            "prompt": self.prompt,
            "subject": self.subject,
            "target_new": self.target_new,
            "target_true": self.target_true,
            "paraphrase_prompts": _listed(self.paraphrase_prompts),
            "neighborhood_prompts": _listed(self.neighborhood_prompts, _pair_dict),
        }
        return {k: v for k, v in out.items() if not isinstance(v, Missing)}

    @classmethod
    def from_dict(cls, data: Any) -> EditRequest:
        """Inverse of `to_dict`. Never raises: absent required keys become `Missing`,
        absent optional ones take their defaults; unknown keys are ignored. Neighbourhood
        entries may be `{"prompt": ..., "answer": ...}` objects or `[prompt, answer]` pairs."""
        if not isinstance(data, Mapping):
            gone = Missing(f"record is a {type(data).__name__}, not an object")
            return cls(prompt=gone, subject=gone, target_new=gone)  # type: ignore[arg-type]
        neighbours = data.get("neighborhood_prompts", ())
        if isinstance(neighbours, (list, tuple)):
            neighbours = tuple(_dict_pair(n) for n in neighbours)
        return cls(
            prompt=data.get("prompt", Missing("key 'prompt'")),
            subject=data.get("subject", Missing("key 'subject'")),
            target_new=data.get("target_new", Missing("key 'target_new'")),
            target_true=data.get("target_true"),
            paraphrase_prompts=data.get("paraphrase_prompts", ()),
            neighborhood_prompts=neighbours,
            case_id=data.get("case_id"),
        )


def _listed(value: Any, item=lambda x: x) -> Any:
    return [item(v) for v in value] if isinstance(value, tuple) else value


def _pair_dict(pair: Any) -> Any:
    if isinstance(pair, tuple) and len(pair) == 2:
        return {"prompt": pair[0], "answer": pair[1]}
    return pair


def _dict_pair(entry: Any) -> Any:
    if isinstance(entry, Mapping) and set(entry) == {"prompt", "answer"}:
        return (entry["prompt"], entry["answer"])
    return entry


__all__ = ["EditRequest", "Missing", "locate_subject"]
