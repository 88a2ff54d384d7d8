import gzip
import json

import pytest

from seqedit.data import EditRequest, RequestValidationError, available, load


def read_json_gz(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def write(path, records, *, lines=False, compress=False):
    text = "\n".join(json.dumps(r) for r in records) + "\n" if lines else json.dumps(records)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


# ---- packaged datasets ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def counterfact():
    return load("counterfact")  # loaded once: 10k records take a second or two on a busy CPU


def test_counterfact_default_split_is_edit(counterfact):
    requests = counterfact
    assert len(requests) == 10_000
    assert requests[0] == EditRequest(
        prompt="The mother tongue of {} is", subject="Danielle Darrieux", target_new="English",
        target_true="French",
        paraphrase_prompts=("Where Danielle Darrieux is from, people speak the language of",),
        neighborhood_prompts=(("Michel Rocard is a native speaker of", "French"),), case_id=0)
    assert load("counterfact", split="edit", limit=3) == requests[:3]
    assert load("counterfact", split="train", limit=3) != requests[:3]


def test_counterfact_matches_its_source(shared_data, counterfact):
    source = read_json_gz(shared_data / "editing/counterfact_easyedit/counterfact-edit.json.gz")
    requests = counterfact
    assert len(requests) == len(source)
    for request, record in zip(requests, source):
        assert request.case_id == record["case_id"]
        assert request.filled_prompt == record["prompt"]  # the subject went back where it was
        assert (request.subject, request.target_new, request.target_true) == (
            record["subject"], record["target_new"], record["ground_truth"])
        assert request.paraphrase_prompts == (record["rephrase_prompt"],)
        assert request.neighborhood_prompts == (
            (record["locality_prompt"], record["locality_ground_truth"]),)


def test_counterfact_train_split_and_name_agree(counterfact):
    train = load("counterfact-train", limit=50)
    assert train == load("counterfact", split="train", limit=50)
    assert train[0].case_id == 2 and train[0].filled_prompt == "Toko Yasuda, the"
    edit_ids = {r.case_id for r in counterfact}
    assert not edit_ids & {r.case_id for r in load("counterfact-train")}


def test_zsre_mapping(shared_data):
    source = read_json_gz(shared_data / "editing/zsre/zsre_mend_eval_portability_gpt4.json.gz")
    requests = load("zsre")
    assert len(requests) == len(source) == 1037
    for i, (request, record) in enumerate(zip(requests, source)):
        assert request.case_id == i
        assert request.filled_prompt == record["src"]
        assert (request.target_new, request.target_true) == (record["alt"], record["pred"])
        assert request.paraphrase_prompts == (record["rephrase"],)
        assert request.neighborhood_prompts == ((record["loc"], record["loc_ans"]),)


def test_zsre_first_record():
    first = load("zsre", limit=1)[0]
    assert first.prompt == "When was the inception of {}?"
    assert first.subject == "IAAF Combined Events Challenge"
    assert (first.target_new, first.target_true) == ("2006", "2011")
    assert first.neighborhood_prompts[0][0].startswith("nq question: ")


def test_mquake_one_request_per_rewrite(shared_data):
    source = read_json_gz(shared_data / "editing/mquake/MQuAKE-hard.json.gz")
    requests = load("mquake")
    rewrites = [(case["case_id"], j, rw) for case in source
                for j, rw in enumerate(case["requested_rewrite"])]
    assert len(requests) == len(rewrites) == 1716
    for request, (case_id, j, rw) in zip(requests, rewrites):
        assert request.case_id == f"{case_id}:{j}"
        assert (request.prompt, request.subject) == (rw["prompt"], rw["subject"])
        assert request.target_new == rw["target_new"]["str"]
        assert request.target_true == rw["target_true"]["str"]
        assert request.paraphrase_prompts == (rw["question"],)
        assert request.neighborhood_prompts == ()


def test_mquake_limit_counts_requests():
    requests = load("mquake", limit=6)
    assert [r.case_id for r in requests] == [
        "7417:0", "7417:1", "7417:2", "7417:3", f"{requests[4].case_id.split(':')[0]}:0",
        f"{requests[4].case_id.split(':')[0]}:1"]
    assert requests[0].filled_prompt == "Hey Jude was performed by"


def test_limit_and_split_arguments(counterfact):
    assert load("counterfact", limit=0) == []
    assert load("counterfact", limit=3) == counterfact[:3]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="limit"):
            load("counterfact", limit=bad)
    with pytest.raises(ValueError, match="has split.*edit, train.*'dev'"):
        load("counterfact", split="dev")
    assert available() == {"counterfact": ("edit", "train"), "counterfact-train": ("train",),
                           "zsre": ("eval",), "mquake": ("hard",)}


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'counterfakt'.*counterfact, "
                                         "counterfact-train, mquake, zsre"):
        load("counterfakt")


# ---- files in the supported schemas ----------------------------------------------------------


ROME_EXPECTED = [
    EditRequest(
        prompt="The mother tongue of {} is", subject="Danielle Darrieux", target_new="English",
        target_true="French",
        paraphrase_prompts=(
            "Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
            "An album was recorded for Capitol Nashville but never released. Danielle Darrieux "
            "spoke the language"),
        neighborhood_prompts=(("The mother tongue of Léon Blum is", "French"),
                              ("The native language of Montesquieu is", "French")),
        case_id=0),
    EditRequest(prompt="{} is known for", subject="Marie Curie", target_new="physics",
                target_true="chemistry",
                paraphrase_prompts=("Marie Curie worked in the field of",),
                neighborhood_prompts=(("Linus Pauling is known for", "chemistry"),), case_id=1),
]


@pytest.mark.parametrize("name,lines,compress", [
    ("cf.json", False, False), ("cf.jsonl", True, False),
    ("cf.json.gz", False, True), ("cf.jsonl.gz", True, True),
])
def test_rome_schema_files(tmp_path, rome_records, name, lines, compress):
    path = write(tmp_path / name, rome_records, lines=lines, compress=compress)
    assert load(path) == ROME_EXPECTED
    assert load(str(path), limit=1) == ROME_EXPECTED[:1]


def test_gzip_is_recognised_by_content(tmp_path, rome_records):
    path = write(tmp_path / "cf.json", rome_records, compress=True)
    assert load(path) == ROME_EXPECTED


def test_own_format_round_trip_through_a_file(tmp_path):
    requests = load("counterfact", limit=20) + load("mquake", limit=2)
    path = write(tmp_path / "mine.jsonl", [r.to_dict() for r in requests], lines=True)
    assert load(path) == requests


def test_handwritten_minimal_records_get_positions_as_ids(tmp_path):
    path = write(tmp_path / "mine.json", [
        {"prompt": "Paris is the capital of", "subject": "Paris", "target_new": "Italy"},
        {"prompt": "{} plays", "subject": "Messi", "target_new": "cricket", "case_id": "m"},
    ])
    requests = load(path)
    assert [r.case_id for r in requests] == [0, "m"]
    assert requests[0].prompt == "{} is the capital of" and requests[0].target_true is None


def test_easyedit_lists_and_uneven_locality(tmp_path):
    base = {"case_id": 5, "prompt": "Paris is in", "subject": "Paris", "target_new": "Italy",
            "ground_truth": "France"}
    good = dict(base, rephrase_prompt=["Paris lies in", "Paris sits in"],
                locality_prompt=["Berlin is in", "Rome is in"],
                locality_ground_truth=["Germany", "Italy"])
    path = write(tmp_path / "ee.json", [good])
    [request] = load(path)
    assert request.paraphrase_prompts == ("Paris lies in", "Paris sits in")
    assert request.neighborhood_prompts == (("Berlin is in", "Germany"), ("Rome is in", "Italy"))
    uneven = dict(good, locality_ground_truth=["Germany"])
    with pytest.raises(RequestValidationError) as info:
        load(write(tmp_path / "uneven.json", [uneven]))
    assert [(p.field, p.message) for p in info.value.problems] == [
        ("neighborhood_prompts[1].answer", "missing (key 'locality_ground_truth[1]')")]


# ---- bad files: all or nothing --------------------------------------------------------------


def test_one_bad_record_fails_the_whole_load_and_all_problems_are_listed(tmp_path, rome_records):
    rome_records[0]["requested_rewrite"]["subject"] = "Danielle Darrieu"  # a typo: still found
    rome_records[1]["requested_rewrite"]["prompt"] = "Marie Skłodowska is known for"
    del rome_records[1]["requested_rewrite"]["target_new"]["str"]
    rome_records.append(dict(rome_records[0], case_id=1))
    rome_records[2]["paraphrase_prompts"] = "not a list"
    path = write(tmp_path / "bad.json", rome_records)
    with pytest.raises(RequestValidationError) as info:
        load(path)
    err = info.value
    assert [(p.index, p.case_id, p.field) for p in err.problems] == [
        (1, 1, "subject"), (1, 1, "target_new"), (2, 1, "paraphrase_prompts"), (2, 1, "case_id")]
    assert err.problems[1].message == "missing (key 'requested_rewrite.target_new.str')"
    assert str(err).startswith(f"4 problem(s) in 2 of 3 edit request(s) from {path}:")
    assert err.source == str(path)


def test_limit_only_validates_what_is_loaded(tmp_path, rome_records):
    rome_records[1]["requested_rewrite"]["target_new"]["str"] = ""
    path = write(tmp_path / "bad.json", rome_records)
    assert load(path, limit=1) == ROME_EXPECTED[:1]
    with pytest.raises(RequestValidationError):
        load(path)


def test_damaged_records_are_reported_under_the_majority_schema(tmp_path, rome_records):
    rome_records.insert(0, ["not", "an", "object"])
    rome_records.append({"case_id": 9, "requested_rewrite": "oops"})
    with pytest.raises(RequestValidationError) as info:
        load(write(tmp_path / "bad.json", rome_records))
    problems = info.value.problems
    assert problems[0] == (0, None, "*", "unusable record: record is a list, not an object")
    assert [(p.index, p.field) for p in problems[1:]] == [
        (3, "prompt"), (3, "subject"), (3, "target_new"), (3, "target_true")]
    assert problems[1].message == ("missing (key 'requested_rewrite.prompt': "
                                   "'requested_rewrite' is a str, not an object)")


def test_mquake_case_without_rewrites(tmp_path):
    case = {"case_id": 3, "requested_rewrite": [], "questions": ["q?"]}
    with pytest.raises(RequestValidationError) as info:
        load(write(tmp_path / "mq.json", [case]))
    assert info.value.problems == [(0, "3:0", "*", "unusable record: key 'requested_rewrite': "
                                                   "expected a non-empty list, got []")]


def test_unrecognised_schema_names_found_and_expected_keys(tmp_path):
    path = write(tmp_path / "odd.json", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match=r"unrecognised record schema.*\['answer', 'question'\]"
                                         r".*counterfact-rome \(requested_rewrite\).*zsre-mend"):
        load(path)


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError):
        load("absent.jsonl")
    (tmp_path / "obj.json").write_text('{"prompt": "x"}')
    with pytest.raises(ValueError, match="expected a JSON array of records, got a dict"):
        load(tmp_path / "obj.json")
    (tmp_path / "broken.json").write_text('[{"prompt": ')
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        load(tmp_path / "broken.json")
    (tmp_path / "broken.jsonl").write_text('{"a": 1}\n{bad\n\n[1,\n')
    with pytest.raises(ValueError, match=r"2 line\(s\) are not valid JSON:\nline 2.*\nline 4"):
        load(tmp_path / "broken.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="expected one of .json"):
        load(tmp_path / "data.csv")
    (tmp_path / "empty.json").write_text("[]")
    assert load(tmp_path / "empty.json") == []
    with pytest.raises(ValueError, match="split='edit' applies to named datasets only"):
        load(tmp_path / "empty.json", split="edit")
