"""Record schemas of the editing benchmarks and how each maps onto `EditRequest`.

Converters take one JSON object (the loader turns anything else into a single "not an object"
problem) and never raise: a field the record lacks becomes `Missing` (naming the source key) and
a field of the wrong type is passed through, so that `validate` reports all of a file's problems
in one error. Records without an id get their position in the file as `case_id`.

Field mapping:

* `seqedit`: the output of `EditRequest.to_dict()` (also the simplest hand-written format).
* `counterfact-easyedit` (EasyEdit/MEND flat CounterFact): `prompt` (filled) → prompt,
  `ground_truth` → target_true, `rephrase_prompt` → paraphrases, (`locality_prompt`,
  `locality_ground_truth`) → neighbourhood. Strings or equal-length lists are accepted.
* `counterfact-rome` (ROME's counterfact.json): `requested_rewrite.{prompt, subject,
  target_new.str, target_true.str}`, `paraphrase_prompts`; every `neighborhood_prompts` entry is
  paired with `target_true.str`, the answer ROME scores neighbours against. `attribute_prompts`
  and `generation_prompts` are not kept.
* `zsre-mend`: `src` → prompt, `alt` → target_new (EasyEdit's and D4S's convention), `pred` →
  target_true (the answer the edit replaces: MEND's `cond` reads "pred >> alt"), `rephrase` →
  paraphrase, (`loc`, `loc_ans`) → neighbourhood, kept verbatim with its "nq question: " prefix.
  The gold `answers` are not kept. ROME/MEMIT/AlphaEdit instead edit towards `answers[0]`.
* `mquake`: one request per entry of `requested_rewrite`, case_id "<case_id>:<j>"; the rewrite's
  `question` becomes its paraphrase; no neighbourhood prompts. The multi-hop questions are not
  kept (they are an evaluation of their own).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from .request import EditRequest, Missing

_REQUIRED = object()


def _dig(record: Any, path: str, default: Any = _REQUIRED, *, at: str = "") -> Any:
    """`record[a][b]` for path "a.b"; `default` when the last key is absent (if given), else a
    `Missing` that names the source key and what went wrong."""
    full = f"{at}.{path}" if at else path
    value, walked = record, at
    for key in path.split("."):
        if not isinstance(value, Mapping):
            where = f"'{walked}'" if walked else "the record"
            return Missing(f"key '{full}': {where} is a {type(value).__name__}, not an object")
        if key not in value:
            return Missing(f"key '{full}'") if default is _REQUIRED else default
        value = value[key]
        walked = f"{walked}.{key}" if walked else key
    return value


def _case_id(record: Mapping[str, Any], position: int) -> Any:
    return record.get("case_id", position)


def _as_list(value: Any) -> Any:
    # A single string where the schema allows "a string or a list of strings".
    return [value] if isinstance(value, str) else value


def _zip_pairs(prompts: Any, answers: Any, answer_key: str) -> Any:
    prompts, answers = _as_list(prompts), _as_list(answers)
    if not isinstance(prompts, (list, tuple)):
        return prompts
    if not isinstance(answers, (list, tuple)):
        answers = []
    # Unequal lengths: the unmatched side is Missing so validate() names the entry.
    return tuple((prompts[i] if i < len(prompts) else Missing(f"prompt for {answer_key}[{i}]"),
                  answers[i] if i < len(answers) else Missing(f"key '{answer_key}[{i}]'"))
                 for i in range(max(len(prompts), len(answers))))


def from_seqedit(record: Mapping[str, Any], position: int) -> list[EditRequest]:
    request = EditRequest.from_dict(record)
    if "case_id" not in record:
        request = dataclasses.replace(request, case_id=position)
    return [request]


def from_counterfact_easyedit(record: Mapping[str, Any], position: int) -> list[EditRequest]:
    return [EditRequest(
        prompt=_dig(record, "prompt"),
        subject=_dig(record, "subject"),
        target_new=_dig(record, "target_new"),
        target_true=_dig(record, "ground_truth"),
        paraphrase_prompts=_as_list(_dig(record, "rephrase_prompt", ())),
        neighborhood_prompts=_zip_pairs(_dig(record, "locality_prompt", ()),
                                        _dig(record, "locality_ground_truth", ()),
                                        "locality_ground_truth"),
        case_id=_case_id(record, position),
    )]


def from_counterfact_rome(record: Mapping[str, Any], position: int) -> list[EditRequest]:
    true = _dig(record, "requested_rewrite.target_true.str")
    neighbours = _dig(record, "neighborhood_prompts", ())
    if isinstance(neighbours, (list, tuple)):
        neighbours = tuple((prompt, true) for prompt in neighbours)
    return [EditRequest(
        prompt=_dig(record, "requested_rewrite.prompt"),
        subject=_dig(record, "requested_rewrite.subject"),
        target_new=_dig(record, "requested_rewrite.target_new.str"),
        target_true=true,
        paraphrase_prompts=_dig(record, "paraphrase_prompts", ()),
        neighborhood_prompts=neighbours,
        case_id=_case_id(record, position),
    )]


def from_zsre_mend(record: Mapping[str, Any], position: int) -> list[EditRequest]:
    return [EditRequest(
        prompt=_dig(record, "src"),
        subject=_dig(record, "subject"),
        target_new=_dig(record, "alt"),
        target_true=_dig(record, "pred", None),
        paraphrase_prompts=_as_list(_dig(record, "rephrase", ())),
        neighborhood_prompts=_zip_pairs(_dig(record, "loc", ()), _dig(record, "loc_ans", ()),
                                        "loc_ans"),
        case_id=_case_id(record, position),
    )]


def from_mquake(record: Mapping[str, Any], position: int) -> list[EditRequest]:
    case = _case_id(record, position)
    rewrites = _dig(record, "requested_rewrite")
    if not isinstance(rewrites, list) or not rewrites:
        why = rewrites if isinstance(rewrites, Missing) else Missing(
            f"key 'requested_rewrite': expected a non-empty list, got {rewrites!r:.60}")
        return [EditRequest(prompt=why, subject=why, target_new=why,  # type: ignore[arg-type]
                            case_id=f"{case}:0")]
    return [EditRequest(
        prompt=_dig(rewrite, "prompt", at=f"requested_rewrite[{j}]"),
        subject=_dig(rewrite, "subject", at=f"requested_rewrite[{j}]"),
        target_new=_dig(rewrite, "target_new.str", at=f"requested_rewrite[{j}]"),
        target_true=_dig(rewrite, "target_true.str", at=f"requested_rewrite[{j}]"),
        paraphrase_prompts=_as_list(_dig(rewrite, "question", (), at=f"requested_rewrite[{j}]")),
        case_id=f"{case}:{j}",
    ) for j, rewrite in enumerate(rewrites)]


@dataclasses.dataclass(frozen=True)
class Schema:
    keys: frozenset[str]  # a record has all of these; the largest matching set wins
    convert: Callable[[Mapping[str, Any], int], list[EditRequest]]


SCHEMAS: Mapping[str, Schema] = MappingProxyType({
    "seqedit": Schema(frozenset({"prompt", "subject", "target_new"}), from_seqedit),
    "counterfact-easyedit": Schema(
        frozenset({"prompt", "subject", "target_new", "ground_truth"}), from_counterfact_easyedit),
    "counterfact-rome": Schema(frozenset({"requested_rewrite"}), from_counterfact_rome),
    "zsre-mend": Schema(frozenset({"src", "subject", "alt"}), from_zsre_mend),
    "mquake": Schema(frozenset({"requested_rewrite", "questions"}), from_mquake),
})


def schema_of(record: Any) -> str | None:
    """The most specific schema whose identifying keys the record has, or None."""
    if not isinstance(record, Mapping):
        return None
    fits = [(len(s.keys), name) for name, s in SCHEMAS.items() if s.keys <= record.keys()]
    return max(fits)[1] if fits else None


def describe_schemas() -> str:
    return "; ".join(f"{name} ({', '.join(sorted(s.keys))})" for name, s in SCHEMAS.items())
