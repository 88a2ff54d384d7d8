"""Damaged or malformed data files: each is one clear error naming the file (and the record and
field where there is one), raised before any request is returned."""
from __future__ import annotations

import gzip
import json

import pytest

from seqedit.data import EditRequest, RequestValidationError, load, validate

GOOD = {"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome",
        "target_true": "Paris", "paraphrase_prompts": ["France's capital city is"],
        "neighborhood_prompts": [{"prompt": "The capital of Spain is", "answer": "Madrid"}],
        "case_id": 0}


def records(*overrides):
    return [{**GOOD, "case_id": i, **o} for i, o in enumerate(overrides)]


def write(path, data, *, lines=False, compress=False):
    if isinstance(data, bytes):
        raw = data
    elif lines:
        raw = ("\n".join(json.dumps(r) for r in data) + "\n").encode()
    else:
        raw = json.dumps(data).encode()  # ensure_ascii: a lone surrogate is written as \ud800
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def raises_naming_file(path, *pieces, error=ValueError):
    with pytest.raises(error) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    for piece in pieces:
        assert piece in message, (piece, message)
    return info.value


# ---- the file itself ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["edits.json.gz", "edits.jsonl.gz"])
@pytest.mark.parametrize("keep", [0.2, 0.6, 0.95])
def test_truncated_gzip_names_the_file(tmp_path, name, keep):
    whole = gzip.compress(json.dumps(records({}, {}, {})).encode() * 20)
    path = write(tmp_path / name, whole[: int(len(whole) * keep)])
    err = raises_naming_file(path, "truncated or corrupt")
    assert not isinstance(err, RequestValidationError)


def test_corrupt_gzip_body_names_the_file(tmp_path):
    whole = bytearray(gzip.compress(json.dumps(records({}, {})).encode()))
    whole[-8:-4] = bytes(b ^ 0xFF for b in whole[-8:-4])  # the CRC no longer matches
    raises_naming_file(write(tmp_path / "edits.json.gz", bytes(whole)), "truncated or corrupt")


def test_truncated_gzip_without_gz_suffix_names_the_file(tmp_path):
    whole = gzip.compress(json.dumps(records({})).encode())  # sniffed, not trusted to the name
    raises_naming_file(write(tmp_path / "edits.json", whole[:-6]), "gzip")


@pytest.mark.parametrize("name,compress", [("edits.json", False), ("edits.jsonl.gz", True)])
def test_invalid_utf8_names_the_file_and_line(tmp_path, name, compress):
    lines = [json.dumps(r).encode() for r in records({}, {}, {})]
    lines[1] = lines[1].replace(b"Rome", b"R\xffme")
    body = b"\n".join(lines) if name.endswith(".jsonl.gz") else b"[" + b",\n".join(lines) + b"]"
    path = write(tmp_path / name, body, compress=compress)
    raises_naming_file(path, "not UTF-8", "line 2", "0xff")


def test_utf16_file_is_not_utf8(tmp_path):
    path = write(tmp_path / "edits.json", json.dumps(records({})).encode("utf-16"))
    raises_naming_file(path, "not UTF-8")


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path / "edits.json", b"\xef\xbb\xbf" + json.dumps(records({})).encode())
    assert load(path)[0].target_new == "Rome"


@pytest.mark.parametrize("top", [{"records": [GOOD]}, "edits", 3, None, True])
def test_top_level_that_is_not_a_list_names_the_file(tmp_path, top):
    raises_naming_file(write(tmp_path / "edits.json", top), "expected a JSON array of records")


def test_every_record_a_list_names_the_file(tmp_path):
    path = write(tmp_path / "edits.json", [[GOOD], [GOOD]])
    raises_naming_file(path, "the first record is a list, not an object")


def test_deep_nesting_names_the_file(tmp_path):
    raises_naming_file(write(tmp_path / "edits.json", b"[" * 100_000 + b"]" * 100_000),
                       "nested too deeply")
    path = write(tmp_path / "edits.jsonl", json.dumps(GOOD).encode() + b"\n" + b"[" * 100_000)
    raises_naming_file(path, "line 2")


def test_integer_too_long_to_read_names_the_file(tmp_path):
    body = json.dumps(records({})).replace('"case_id": 0', '"case_id": ' + "9" * 5000)
    raises_naming_file(write(tmp_path / "edits.json", body.encode()), "unreadable JSON")


def test_json_lines_split_only_at_newlines(tmp_path):
    # U+2028 and U+0085 are legal unescaped inside JSON strings; str.splitlines cut lines at them.
    text = "\n".join(json.dumps(r, ensure_ascii=False)
                     for r in records({"target_new": "Ro\u2028me"}, {"target_new": "Ro\x85me"}))
    path = write(tmp_path / "edits.jsonl", text.encode())
    assert [r.target_new for r in load(path)] == ["Ro\u2028me", "Ro\x85me"]


@pytest.mark.parametrize("bad", [None, 3, ["edits.json"]])
def test_a_name_that_is_neither_string_nor_path(bad):
    with pytest.raises(ValueError, match="expected a dataset name or a path"):
        load(bad)


def test_a_split_that_is_not_a_string():
    with pytest.raises(ValueError, match="split must be a string"):
        load("counterfact", split=["edit"])


# ---- records of the wrong shape --------------------------------------------------------------


def only_problem(err):
    assert isinstance(err, RequestValidationError)
    (problem,) = err.problems
    return problem


@pytest.mark.parametrize("bad", [["prompt", "subject"], "a record", 7, None])
def test_a_record_that_is_not_an_object(tmp_path, bad):
    path = write(tmp_path / "edits.json", [*records({}), bad, *records({})[1:]])
    err = raises_naming_file(path, "record 1", error=RequestValidationError)
    problem = only_problem(err)
    assert (problem.index, problem.field) == (1, "*")
    assert type(bad).__name__ in problem.message and err.source == str(path)


@pytest.mark.parametrize("field,value,named", [
    ("target_new", {"str": "Rome"}, "target_new"),
    ("prompt", ["The capital of {} is"], "prompt"),
    ("subject", {"name": "France"}, "subject"),
    ("target_true", ["Paris"], "target_true"),
    ("paraphrase_prompts", {"0": "France's capital city is"}, "paraphrase_prompts"),
    ("paraphrase_prompts", "France's capital city is", "paraphrase_prompts"),
    ("paraphrase_prompts", [{"text": "x"}], "paraphrase_prompts[0]"),
    ("neighborhood_prompts", {"prompt": "a", "answer": "b"}, "neighborhood_prompts"),
    ("neighborhood_prompts", [["a", "b", "c"]], "neighborhood_prompts[0]"),
    ("neighborhood_prompts", [{"prompt": {"x": 1}, "answer": "b"}],
     "neighborhood_prompts[0].prompt"),
    ("case_id", {"id": 3}, "case_id"),
])
def test_a_field_of_the_wrong_shape(tmp_path, field, value, named):
    path = write(tmp_path / "edits.jsonl", records({}, {field: value}), lines=True)
    problem = only_problem(raises_naming_file(path, "record 1", named,
                                              error=RequestValidationError))
    assert (problem.index, problem.field) == (1, named)


def test_nesting_in_benchmark_schemas(tmp_path, rome_records):
    rome_records[1]["requested_rewrite"]["target_new"] = "physics"  # {"str": ...} expected
    rome_records[0]["requested_rewrite"]["subject"] = {"str": "Danielle Darrieux"}
    err = raises_naming_file(write(tmp_path / "cf.json", rome_records), "record 0", "record 1",
                             "requested_rewrite.target_new", error=RequestValidationError)
    assert {(p.index, p.field) for p in err.problems} == {(0, "subject"), (1, "target_new")}
    mquake = [{"case_id": 5, "questions": ["q"], "requested_rewrite": {"prompt": "{} is"}}]
    err = raises_naming_file(write(tmp_path / "mq.json", mquake), "requested_rewrite",
                             "non-empty list", error=RequestValidationError)
    assert err.problems[0].case_id == "5:0"


# ---- text that is not Unicode ----------------------------------------------------------------

SURROGATE = "\ud800"


@pytest.mark.parametrize("override,field", [
    ({"prompt": f"The capital{SURROGATE} of {{}} is"}, "prompt"),
    ({"subject": f"Fran{SURROGATE}ce"}, "subject"),
    ({"target_new": SURROGATE}, "target_new"),
    ({"target_true": f"Par{SURROGATE}is"}, "target_true"),
    ({"paraphrase_prompts": ["fine", f"bad {SURROGATE}"]}, "paraphrase_prompts[1]"),
    ({"neighborhood_prompts": [["The capital of Spain is", f"Ma{SURROGATE}drid"]]},
     "neighborhood_prompts[0].answer"),
    ({"neighborhood_prompts": [["\udfff capital", "Madrid"]]}, "neighborhood_prompts[0].prompt"),
    ({"case_id": f"id-{SURROGATE}"}, "case_id"),
])
def test_lone_surrogate_names_record_and_field(tmp_path, override, field):
    path = write(tmp_path / "edits.json", records({}, {}, override))
    problem = only_problem(raises_naming_file(path, "record 2", field, "lone surrogate",
                                              error=RequestValidationError))
    assert (problem.index, problem.field) == (2, field)


def test_a_surrogate_pair_is_one_character_not_an_error(tmp_path):
    path = write(tmp_path / "edits.json", records({"target_new": "\U0001f600"}))
    assert load(path)[0].target_new == "\U0001f600"  # written as "\ud83d\ude00" by json.dumps


@pytest.mark.parametrize("tokenizer_fixture", ["llama", "word_tokenizer"])
def test_lone_surrogate_with_a_tokenizer_is_a_validation_error(request, tokenizer_fixture):
    tokenizer = request.getfixturevalue(tokenizer_fixture)
    if isinstance(tokenizer, tuple):  # the (model, tokenizer) of a tiny model
        tokenizer = tokenizer[1]
    good = EditRequest.from_dict(GOOD)
    bad = EditRequest.from_dict({**GOOD, "case_id": 1, "target_new": f"Ro{SURROGATE}me",
                                 "paraphrase_prompts": [f"{SURROGATE} capital"]})
    with pytest.raises(RequestValidationError) as info:
        validate([good, bad], tokenizer=tokenizer, max_length=64)
    assert {(p.index, p.field) for p in info.value.problems} == {
        (1, "target_new"), (1, "paraphrase_prompts[0]")}
    assert validate([good], tokenizer=tokenizer, max_length=64) == [good]
