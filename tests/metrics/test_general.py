"""The general-ability evaluator: packaged lm-eval tasks, offline, on tiny and real models."""
from __future__ import annotations

import math
import socket
import sys

import pytest
import torch
from harness_helpers import collapse, context, offline, same_weights, snapshot

from seqedit.metrics import create, harness, task_docs
from seqedit.metrics.general import GENERAL_TASKS, GeneralEvaluator
from seqedit.metrics.suite import no_signal
from seqedit.models import tiny

__all__ = ["offline"]  # a fixture, imported for pytest
LIMITS = {"wikitext": 1}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Every general task (3 docs; one WikiText article) on a tiny llama with the network cut:
    the unedited result, the evaluated result, and whether the weights stayed put."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        def refuse(*_a, **_k):
            raise OSError("network access attempted in an offline test")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        # A context long enough for MMLU's longest answer text (733 bytes) in the cloze task.
        model, tok = tiny("llama", seed=0, max_positions=1024)
        ctx = context(tok, tmp_path_factory.mktemp("general"))
        ev = GeneralEvaluator(tasks=GENERAL_TASKS, limit=3, task_limits=LIMITS, batch_size=8)
        ev.prepare(model, ctx)
        model.train(True)  # evaluate must hand the mode back as it found it
        before = snapshot(model)
        result = ev.evaluate(model, ctx)
        unchanged = same_weights(model, before) and model.training
    torch.set_num_threads(threads)
    return result, unchanged


def test_every_task_runs_offline_with_finite_scores(tiny_run):
    result, _ = tiny_run
    for task in GENERAL_TASKS:
        scores = [m for m in result.metrics if m.protocol["task"] == task]
        assert scores, task
        for m in scores:
            assert m.protocol["family"] == "general" and m.protocol["harness"] == harness.HARNESS
            assert m.n == (1 if task == "wikitext" else 3)
            if m.value is None:  # PRUNE's NLI accuracy over parseable answers: none parsed
                assert m.name == "prune_nli.acc"
                continue
            assert math.isfinite(m.value), m.label
            if m.protocol["metric"] not in {"word_perplexity", "byte_perplexity",
                                            "bits_per_byte"}:
                assert 0.0 <= m.value <= 1.0, m.label
    assert result.value("wikitext.byte_perplexity") > 1.0
    assert result.get("boolq.acc").protocol["limit"] == 3
    assert result.get("wikitext.word_perplexity").protocol["limit"] == 1


def test_info_carries_unedited_score_chance_and_flags(tiny_run):
    result, _ = tiny_run
    boolq = result.info["boolq"]
    assert boolq["unedited"] == result.value("boolq.acc")  # nothing changed in between
    assert 0.5 <= boolq["chance"] <= 1.0 and isinstance(boolq["no_signal"], bool)
    assert result.info["wikitext"]["chance"] is None
    assert result.info["wikitext"]["no_signal"] is None
    assert result.info["gsm8k"]["chance"] == 0.0
    assert set(result.info["muted_tasks"]) <= set(GENERAL_TASKS)


def test_evaluate_leaves_weights_bit_identical(tiny_run):
    assert tiny_run[1]


def test_seeded_limit_is_stable_nested_and_seed_dependent():
    docs = [{"i": i} for i in range(50)]
    a, again = harness.select(docs, 10, seed=0), harness.select(docs, 10, seed=0)
    other = harness.select(docs, 10, seed=1)
    assert a == again and a != other and a != docs[:10]
    assert [d["i"] for d in a] == sorted(d["i"] for d in a)  # file order kept
    assert all(d in harness.select(docs, 20, seed=0) for d in a)  # a prefix of one order
    assert harness.select(docs, None, 0) == docs == harness.select(docs, 99, 0)
    spec = harness.load_spec("boolq")
    assert harness.task_docs(spec, 5, 3) == harness.task_docs(spec, 5, 3)
    assert harness.task_docs(spec, 5, 3) != harness.task_docs(spec, 5, 4)


def test_unedited_scores_are_cached_by_weights(one_thread, offline, tmp_path, monkeypatch):
    model, tok = tiny("llama", seed=1)
    ctx = context(tok, tmp_path)
    calls = []
    real = harness.run_tasks
    monkeypatch.setattr(harness, "run_tasks", lambda *a, **k: calls.append(1) or real(*a, **k))
    ev = create("general", tasks=["sst2"], limit=3, batch_size=4)
    ev.prepare(model, ctx)
    first = ev._unedited
    ev.prepare(model, ctx)
    create("general", tasks=["sst2"], limit=3, batch_size=4).prepare(model, ctx)
    assert len(calls) == 1 and ev._unedited == first
    create("general", tasks=["sst2"], limit=3, seed=1).prepare(model, ctx)
    assert len(calls) == 2  # another subset is another measurement
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    ev.prepare(model, ctx)
    assert len(calls) == 3


def test_no_signal_rule():
    assert no_signal(0.55, 0.05, 0.5, 100) is True  # 0.05 above chance, 1 stderr
    assert no_signal(0.70, 0.05, 0.5, 100) is False  # 4 stderr above
    assert no_signal(0.45, 0.05, 0.5, 100) is True  # below chance
    assert no_signal(0.0, 0.0, 0.0, 10) is True  # GSM8K at zero: no signal
    assert no_signal(0.6, None, 0.5, 400) is False  # binomial stderr 0.0245
    assert no_signal(0.6, None, 0.5, 25) is True  # binomial stderr 0.098
    assert no_signal(30.0, None, None, 10, higher_is_better=False) is None
    assert no_signal(None, None, 0.5, 10) is None


def test_muting_fires_on_a_collapsed_model(one_thread, offline, tmp_path):
    model, tok = tiny("llama", seed=0)
    ev = create("general", tasks=["boolq", "sst2", "gsm8k"], limit=6, batch_size=8)
    collapse(model)
    ev.prepare(model, context(tok, tmp_path))
    result = ev.evaluate(model, context(tok, tmp_path))
    for task in ("boolq", "sst2", "gsm8k"):
        assert result.info[task]["muted"], task
        assert result.value(f"{task}.modal_share") == 1.0
    assert result.info["muted_tasks"] == ["boolq", "gsm8k", "sst2"]


def test_muting_rule_on_answers():
    assert harness.muting([0, 1, 0, 1, 1], 0.9)["muted"] is False
    assert harness.muting([1] * 19 + [0], 0.9)["muted"] is True  # 95% one answer
    assert harness.muting([1] * 9 + [0], 0.9)["muted"] is False  # exactly 90%: not above
    texts = harness.muting(["", " ", "\n", "x"] * 10, 0.7)
    assert texts["empty_share"] == 0.75 and texts["muted"]
    assert harness.muting([None, None], 0.9) is None


def test_bad_options_and_missing_harness(monkeypatch):
    with pytest.raises(ValueError, match="unknown task"):
        create("general", tasks=["boolq", "hellaswag"])
    with pytest.raises(ValueError, match="unknown option"):
        create("general", limt=3)
    with pytest.raises(ValueError, match="task_limits names unknown task"):
        create("general", tasks=["boolq"], task_limits={"wikitxt": 2})
    create("general", tasks=["boolq"], task_limits={"wikitext": 2})  # known, just not run
    with pytest.raises(ValueError, match="positive int"):
        create("general", tasks=["boolq"], limit=0)
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"pip install 'seqedit\[eval\]'"):
        harness.require_lm_eval()


def test_bad_data_names_file_and_field(tmp_path, monkeypatch):
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "dev.jsonl.gz").write_text('{"question": "q", "passage": "p"}\n')
    monkeypatch.setattr(task_docs, "DATA_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"boolq/dev.jsonl.gz record 0: missing field 'answer'"):
        task_docs.boolq()
    with pytest.raises(FileNotFoundError, match="sst2"):
        task_docs.sst2()


def test_packaged_data_matches_the_readme():
    import gzip
    import hashlib
    import re

    readme = (task_docs.DATA_DIR / "README.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| `([^`]+\.gz)` \| `([0-9a-f]{64})` \|$", readme, re.M))
    shipped = {str(p.relative_to(task_docs.DATA_DIR)): p
               for p in task_docs.DATA_DIR.rglob("*.gz")}
    assert listed.keys() == shipped.keys()
    for name, path in shipped.items():
        assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == listed[name]


def test_readers_build_well_formed_documents():
    for name, n, k in (("mmlu", 1516, 4), ("commonsenseqa", 1221, 5), ("boolq", 3267, 2),
                       ("sst2", 856, 2), ("prune_nli", 2489, 2)):
        docs = task_docs.FUNCTIONS[name]()
        assert len(docs) == n, name
        assert all(0 <= d["label"] < k for d in docs), name
    gsm = task_docs.gsm8k()
    assert len(gsm) == 1319 and gsm[0]["target"] == "18" and "####" not in gsm[0]["rationale"]
    wiki = task_docs.wikitext()
    assert len(wiki) == 62 and wiki[0]["page"].startswith("= Robert <unk> =")


@pytest.mark.slow
def test_every_task_on_smollm2(one_thread, offline, tmp_path):
    import seqedit.models
    from seqedit.metrics.safety import SAFETY_TASKS

    model, tok = seqedit.models.load("smollm2-135m")
    for family, tasks in (("general", GENERAL_TASKS), ("safety", SAFETY_TASKS)):
        limits = {"wikitext": 1} if family == "general" else {}
        ev = create(family, tasks=tasks, limit=3, task_limits=limits, batch_size=8)
        ctx = context(tok, tmp_path)
        ev.prepare(model, ctx)
        result = ev.evaluate(model, ctx)
        for m in result.metrics:
            if m.value is None:
                assert m.name == "prune_nli.acc", m.label
                continue
            assert math.isfinite(m.value), m.label
            if "perplexity" in m.name:
                assert 1.0 < m.value < 1e4, m.label
            else:
                assert 0.0 <= m.value <= 1.0 or m.name.endswith("bits_per_byte"), m.label
        if family == "general":
            assert 10 < result.value("wikitext.word_perplexity") < 200


def test_an_untied_output_embedding_is_not_retied(one_thread, offline, tmp_path):
    model, tok = tiny("gpt2", seed=0)
    assert model.config.tie_word_embeddings
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach() + 0.01, requires_grad=False)
    before = snapshot(model)
    ev = create("general", tasks=["sst2"], limit=2, batch_size=2)
    ev.prepare(model, context(tok, tmp_path))
    ev.evaluate(model, context(tok, tmp_path))
    assert same_weights(model, before)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight


def test_no_subprocess_runs_and_lm_eval_is_left_as_found(one_thread, offline, tmp_path,
                                                          monkeypatch):
    import subprocess

    import lm_eval.evaluator as evaluator

    def refuse(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args[:1]}")
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    found = evaluator.get_git_commit_hash, evaluator.add_env_info
    model, tok = tiny("llama", seed=0)
    ev = create("general", tasks=["sst2"], limit=2, batch_size=2)
    ev.prepare(model, context(tok, tmp_path))
    result = ev.evaluate(model, context(tok, tmp_path))
    assert result.metrics and all(math.isfinite(m.value) for m in result.metrics)
    assert (evaluator.get_git_commit_hash, evaluator.add_env_info) == found


def test_quick_probe_defaults_and_frozen_config():
    ev = GeneralEvaluator()
    assert ev.config.tasks == ("wikitext", "sst2", "commonsenseqa_cloze")
    assert ev._limit("wikitext") == 4 and ev._limit("sst2") == 200
    assert GeneralEvaluator(task_limits={"wikitext": None})._limit("wikitext") is None
    assert GeneralEvaluator(task_limits={"sst2": 7})._limit("wikitext") == 4
    with pytest.raises(AttributeError):
        ev.config.limit = 5
    with pytest.raises(TypeError):
        ev.config.task_limits["sst2"] = 5


def test_unedited_result_reports_prepare_without_measuring_again(offline, tmp_path, one_thread):
    model, tok = tiny("llama", seed=2)
    ctx = context(tok, tmp_path)
    ev = GeneralEvaluator(tasks=["sst2"], limit=4)
    ev.prepare(model, ctx)
    calls = []
    measure = ev._measure
    ev._measure = lambda *a: calls.append(1) or measure(*a)
    base = ev.unedited_result(ctx)
    assert not calls
    now = ev.evaluate(model, ctx)
    assert calls
    assert [(m.label, m.value) for m in base.metrics] == [(m.label, m.value) for m in now.metrics]
    assert base.info["sst2"]["unedited"] == now.info["sst2"]["unedited"]
