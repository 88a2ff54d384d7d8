import dataclasses
import json
import unicodedata

import pytest

from seqedit.data import EditRequest, Missing
from seqedit.data.request import locate_subject


def make(prompt, subject="Paris", **kw):
    kw.setdefault("target_new", "Rome")
    return EditRequest(prompt=prompt, subject=subject, **kw)


def test_template_prompt_is_kept():
    r = make("The capital of France is {}, they say", subject="Paris")
    assert r.prompt == "The capital of France is {}, they say"
    assert r.filled_prompt == "The capital of France is Paris, they say"


def test_filled_prompt_becomes_template():
    r = make("Paris is the capital of")
    assert (r.prompt, r.subject) == ("{} is the capital of", "Paris")
    assert r.filled_prompt == "Paris is the capital of"


def test_first_occurrence_is_replaced():
    r = make("Paris, Paris and Paris")
    assert r.prompt == "{}, Paris and Paris"


def test_whole_word_match_preferred_over_earlier_partial_one():
    r = make("Parisians love Paris")
    assert r.prompt == "Parisians love {}"
    # With no whole-word occurrence the first partial one is used.
    assert make("Parisians love it").prompt == "{}ians love it"


def test_whitespace_in_subject_is_flexible_and_prompt_spelling_kept():
    r = make("Where is New \t York located?", subject="  New   York ")
    assert r.prompt == "Where is {} located?"
    assert r.subject == "New \t York"  # as written in the prompt
    assert r.filled_prompt == "Where is New \t York located?"


def test_case_insensitive_only_after_case_sensitive():
    r = make("paris is small; Paris is big")
    assert r.prompt == "paris is small; {} is big"
    r = make("I love PARIS in spring")
    assert (r.prompt, r.subject) == ("I love {} in spring", "PARIS")


def test_nfc_normalisation_matches_decomposed_subject():
    composed = "Léon Blum"
    decomposed = unicodedata.normalize("NFD", composed)
    r = make(f"{composed} was born in", subject=decomposed, target_new=decomposed)
    assert r.prompt == "{} was born in"
    assert r.subject == composed and r.target_new == composed
    assert r == make(f"{decomposed} was born in", subject=composed, target_new=composed)


def test_subject_with_punctuation_edges():
    assert locate_subject("I write C++ daily", "C++") == (8, 11)
    assert locate_subject("Is it A.C. Milan?", "A.C. Milan") == (6, 16)


def test_subject_not_found_leaves_prompt_for_validate():
    r = make("The capital of France is", subject="Berlin")
    assert r.prompt == "The capital of France is" and r.subject == "Berlin"


def test_wrong_types_do_not_raise():
    r = EditRequest(prompt=5, subject=None, target_new=["x"], paraphrase_prompts="one string",
                    neighborhood_prompts=[("p", "a"), "bad"], case_id=1.5)
    assert r.prompt == 5 and r.paraphrase_prompts == "one string"
    assert r.neighborhood_prompts == (("p", "a"), "bad")
    with pytest.raises(TypeError, match="validate"):
        _ = r.filled_prompt


def test_sequences_become_tuples_and_records_are_hashable():
    r = make("{} is", paraphrase_prompts=["a Paris", "b Paris"],
             neighborhood_prompts=[["x is", "y"]])
    assert r.paraphrase_prompts == ("a Paris", "b Paris")
    assert r.neighborhood_prompts == (("x is", "y"),)
    assert len({r, make("{} is", paraphrase_prompts=("a Paris", "b Paris"),
                        neighborhood_prompts=(("x is", "y"),))}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.subject = "London"


def test_round_trip_through_json():
    r = EditRequest(prompt="The mother tongue of Léon Blum is", subject="Léon Blum",
                    target_new="English", target_true="French",
                    paraphrase_prompts=("Léon Blum speaks",),
                    neighborhood_prompts=(("Montesquieu speaks", "French"),), case_id="c-7")
    d = r.to_dict()
    assert d["neighborhood_prompts"] == [{"prompt": "Montesquieu speaks", "answer": "French"}]
    assert EditRequest.from_dict(json.loads(json.dumps(d))) == r
    minimal = make("{} is")
    assert EditRequest.from_dict(json.loads(json.dumps(minimal.to_dict()))) == minimal


def test_from_dict_is_lenient():
    r = EditRequest.from_dict({"prompt": "{} is", "extra": 1,
                               "neighborhood_prompts": [["p", "a"]]})
    assert isinstance(r.subject, Missing) and isinstance(r.target_new, Missing)
    assert r.target_true is None and r.paraphrase_prompts == () and r.case_id is None
    assert r.neighborhood_prompts == (("p", "a"),)
    assert "subject" not in r.to_dict()
    bad = EditRequest.from_dict(["not", "a", "dict"])
    assert isinstance(bad.prompt, Missing) and "list" in bad.prompt.source
