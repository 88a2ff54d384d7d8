"""Probes a request does not carry: zsRE portability questions and MQuAKE multi-hop questions.

They come from the packaged benchmark files and are matched to edit requests by content (filled
prompt and target), so requests loaded with `seqedit.data.load("zsre")` or `load("mquake")` find
theirs whatever slice was taken; requests from elsewhere simply have none.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..data import EditRequest
from ..data._io import packaged, read_records
from ..data.schemas import from_mquake, from_zsre_mend


@dataclass(frozen=True)
class Portability:
    question: str
    answer: str


@dataclass(frozen=True)
class MultiHop:
    case_id: object
    rewrites: tuple[tuple[str, str], ...]  # (filled prompt, target_new) of every rewrite
    questions: tuple[str, ...]
    answers: tuple[str, ...]  # the new answer and its aliases


def content_key(request: EditRequest) -> tuple[str, str]:
    return (request.filled_prompt, request.target_new)


@dataclass(frozen=True)
class ExtraProbes:
    portability: dict[tuple[str, str], Portability]
    multihop: dict[tuple[str, str], list[MultiHop]]  # MQuAKE cases share rewrites

    @classmethod
    def packaged(cls) -> ExtraProbes:
        portability = {}
        zsre = read_records(packaged("zsre_mend_eval_portability_gpt4.json.gz"), "zsre")
        for position, record in enumerate(zsre):
            extra = record.get("portability") or {}
            if extra.get("New Question") and extra.get("New Answer"):
                for req in from_zsre_mend(record, position):
                    portability[content_key(req)] = Portability(extra["New Question"],
                                                                extra["New Answer"])
        multihop = {}
        for position, record in enumerate(read_records(packaged("MQuAKE-hard.json.gz"), "mquake")):
            requests = from_mquake(record, position)
            case = MultiHop(record.get("case_id", position),
                            tuple(content_key(r) for r in requests),
                            tuple(record.get("questions") or ()),
                            (record["new_answer"], *record.get("new_answer_alias", [])))
            for req in requests:
                multihop.setdefault(content_key(req), []).append(case)
        return cls(portability, multihop)

    def complete_cases(self, requests: list[EditRequest]) -> list[MultiHop]:
        """MQuAKE cases all of whose rewrites are among `requests` (the chain is only edited
        once every hop is), in order of first appearance."""
        present = {content_key(r) for r in requests}
        seen, cases = set(), []
        for req in requests:
            for case in self.multihop.get(content_key(req), ()):
                if case.case_id not in seen and set(case.rewrites) <= present:
                    seen.add(case.case_id)
                    cases.append(case)
        return cases
