import pickle

import pytest

from seqedit.data import EditRequest, Missing, RequestValidationError, validate
from seqedit.data.validate import MESSAGE_LINES


def good(i=0, **kw):
    fields = dict(prompt="The capital of {} is", subject="France", target_new="Rome",
                  target_true="Paris", paraphrase_prompts=("France's capital city is",),
                  neighborhood_prompts=(("The capital of Spain is", "Madrid"),), case_id=i)
    fields.update(kw)
    return EditRequest(**fields)


def problems_of(requests, **kw):
    with pytest.raises(RequestValidationError) as info:
        validate(requests, **kw)
    return info.value


def test_valid_list_is_returned_unchanged():
    requests = [good(0), good(1, case_id=None), good(2, target_true=None, case_id="x")]
    assert validate(requests) is requests
    assert validate(tuple(requests)) == tuple(requests)
    assert validate(r for r in requests) == requests
    assert validate([]) == []


def test_error_is_a_value_error_and_names_record_and_field():
    err = problems_of([good(0), good(1, subject="Paris", prompt="The capital of France is",
                                    case_id=17)])
    assert isinstance(err, ValueError)
    assert err.problems == [(1, 17, "subject",
                             "'Paris' not found in prompt 'The capital of France is'")]
    assert str(err).splitlines() == [
        "1 problem(s) in 1 of 2 edit request(s):",
        "record 1 (case_id=17): field 'subject': 'Paris' not found in prompt "
        "'The capital of France is'",
    ]


# Each bad record and the (field, message fragment) it must produce.
BAD = [
    (dict(prompt=Missing("key 'src'")), "prompt", "missing (key 'src')"),
    (dict(prompt=42), "prompt", "expected a string, got int 42"),
    (dict(prompt="  "), "prompt", "empty"),
    (dict(prompt="{} and {} are", subject="X"), "prompt", "exactly one '{}', found 2"),
    (dict(subject=""), "subject", "empty"),
    (dict(subject=["France"]), "subject", "expected a string, got list"),
    (dict(subject=" France"), "subject", "leading or trailing whitespace"),
    (dict(target_new=" \n"), "target_new", "empty"),
    (dict(target_new=None), "target_new", "expected a string, got NoneType"),
    (dict(target_true=""), "target_true", "empty"),
    (dict(target_new=" paris "), "target_new", "same as target_true"),
    (dict(paraphrase_prompts="France's capital is"), "paraphrase_prompts",
     "expected a list of strings, got str"),
    (dict(paraphrase_prompts=("ok", 3)), "paraphrase_prompts[1]", "expected a string, got int"),
    (dict(paraphrase_prompts=("The capital of {} is",)), "paraphrase_prompts[0]",
     "contains '{}'"),
    (dict(neighborhood_prompts="x"), "neighborhood_prompts", "expected a list of (prompt, answer)"),
    (dict(neighborhood_prompts=(("p",),)), "neighborhood_prompts[0]",
     "expected a (prompt, answer)"),
    (dict(neighborhood_prompts=(("p", 1),)), "neighborhood_prompts[0].answer", "got int 1"),
    (dict(neighborhood_prompts=(("", "a"),)), "neighborhood_prompts[0].prompt", "empty"),
    (dict(case_id=1.5), "case_id", "expected an int, a string or None, got float"),
    (dict(case_id=True), "case_id", "got bool"),
]


@pytest.mark.parametrize("change,field,fragment", BAD, ids=[f for _, f, _ in BAD])
def test_each_kind_of_bad_record(change, field, fragment):
    err = problems_of([good(0), good(1, **change), good(2)])
    assert [(p.index, p.field) for p in err.problems] == [(1, field)]
    assert fragment in err.problems[0].message
    assert f"record 1 (case_id={change.get('case_id', 1)!r}): field '{field}'" in str(err)


def test_non_request_items_are_reported():
    err = problems_of([good(0), {"prompt": "{} is"}])
    assert err.problems[0][:3] == (1, None, "*")
    assert "EditRequest.from_dict" in err.problems[0].message


def test_all_problems_of_all_records_in_one_error():
    requests = [
        good(0, subject="Spain", prompt="The capital of France is", target_new=""),
        good(1),
        good(2, target_new=3, paraphrase_prompts=("a", None)),
        good(1),  # duplicate id of record 1
    ]
    err = problems_of(requests)
    assert [(p.index, p.field) for p in err.problems] == [
        (0, "subject"), (0, "target_new"),
        (2, "target_new"), (2, "paraphrase_prompts[1]"),
        (3, "case_id"),
    ]
    assert err.problems[-1].message == "duplicate of record 1"
    assert str(err).startswith("5 problem(s) in 3 of 4 edit request(s):")


def test_duplicate_ids_compare_as_text_and_none_is_never_a_duplicate():
    err = problems_of([good(7), good(case_id="7"), good(case_id=None), good(case_id=None)])
    assert [(p.index, p.field) for p in err.problems] == [(1, "case_id")]


def test_message_is_capped_but_problems_are_complete():
    requests = [good(i, target_new="") for i in range(MESSAGE_LINES + 7)]
    err = problems_of(requests)
    assert len(err.problems) == MESSAGE_LINES + 7
    lines = str(err).splitlines()
    assert len(lines) == 1 + MESSAGE_LINES + 1 and lines[-1] == "... and 7 more"


def test_long_strings_are_shortened_in_messages():
    err = problems_of([good(subject="Atlantis", prompt="x " * 200)])
    assert len(str(err).splitlines()[1]) < 200


# ---- token lengths ------------------------------------------------------------------------


def test_too_long_prompts_with_a_tokenizer(word_tokenizer):
    # Word counts with target "Rome": filled prompt 5 + 1, paraphrase 4 + 1, neighbour 5 + 1.
    r = good(0, target_true=None)
    assert validate([r], tokenizer=word_tokenizer, max_length=6) == [r]
    err = problems_of([r, good(1, target_true=None, paraphrase_prompts=("a b c d e f",)),
                       good(2, target_true="Paris of old")],  # the longer target counts
                      tokenizer=word_tokenizer, max_length=6)
    assert [(p.index, p.field) for p in err.problems] == [
        (1, "paraphrase_prompts[0]"), (2, "prompt"), (2, "paraphrase_prompts[0]")]
    assert err.problems[1].message == ("8 tokens with its target, over max_length 6: "
                                       "'The capital of France is Paris of old'")


def test_length_problems_come_with_the_other_problems(word_tokenizer):
    r = good(0, target_new="", neighborhood_prompts=(("a b c d e f g", "h"),))
    err = problems_of([r], tokenizer=word_tokenizer, max_length=6)
    assert [p.field for p in err.problems] == ["target_new", "neighborhood_prompts[0]"]


def test_encode_only_tokenizer():
    class CharTokenizer:
        def encode(self, text):
            return list(text.encode())

    r = good(0)
    assert validate([r], tokenizer=CharTokenizer(), max_length=100) == [r]
    err = problems_of([r], tokenizer=CharTokenizer(), max_length=20)
    assert {p.field for p in err.problems} == {"prompt", "paraphrase_prompts[0]",
                                               "neighborhood_prompts[0]"}


def test_transformers_tokenizer_and_its_max_length(word_tokenizer):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=word_tokenizer, model_max_length=5)
    err = problems_of([good(0)], tokenizer=hf)  # default max_length = model_max_length
    assert [p.field for p in err.problems] == ["prompt", "neighborhood_prompts[0]"]
    assert validate([good(0)], tokenizer=hf, max_length=6)


def test_max_length_resolution_errors(word_tokenizer):
    class Unbounded:
        model_max_length = int(1e30)  # transformers' "unknown"

        def encode(self, text):
            return text.split()

    with pytest.raises(ValueError, match="pass max_length"):
        validate([good()], tokenizer=Unbounded())
    with pytest.raises(ValueError, match="pass max_length"):
        validate([good()], tokenizer=word_tokenizer)  # has no model_max_length at all
    assert validate([good()], tokenizer=Unbounded(), max_length=10)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        validate([good()], max_length=10)
    with pytest.raises(ValueError, match="positive int"):
        validate([good()], tokenizer=word_tokenizer, max_length=0)


def test_error_survives_pickling():
    err = problems_of([good(0, target_new="")])
    copy = pickle.loads(pickle.dumps(err))
    assert copy.problems == err.problems and str(copy) == str(err)
    assert isinstance(copy.problems[0], tuple) and copy.problems[0].field == "target_new"
