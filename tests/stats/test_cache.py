"""On-disk cache: hits run no forward, every key change recomputes, damaged files are never used."""
from __future__ import annotations

import pytest
import torch
from stats_helpers import ForwardCounter

from seqedit.models import spec as model_spec
from seqedit.stats import StatsCacheWarning, second_moments

BUDGET = 600


def _run(model, tok, layers, corpus, cache_dir, **kw):
    kw = {"max_tokens": BUDGET, "max_length": 64, "batch_tokens": 256, "progress": False, **kw}
    return second_moments(model, tok, layers, corpus=corpus, cache_dir=cache_dir, **kw)


def _files(cache_dir):
    return sorted(p.name for p in cache_dir.iterdir())


def _same(a, b):
    assert a.keys() == b.keys()
    for i in a:
        assert a[i][1] == b[i][1]
        torch.testing.assert_close(a[i][0], b[i][0], rtol=0, atol=0)


@pytest.fixture
def counter(llama):
    model, _ = llama
    c = ForwardCounter(model)
    yield c
    c.remove()


def test_hit_runs_no_forward(llama, corpus, tmp_path, counter):
    model, tok = llama
    first = _run(model, tok, [0, 2], corpus, tmp_path)
    assert counter.calls > 0
    assert len(_files(tmp_path)) == 2 and not any("partial" in f for f in _files(tmp_path))
    counter.calls = 0
    again = _run(model, tok, [2, 0], corpus, tmp_path)
    assert counter.calls == 0
    _same(first, again)


def test_layers_are_cached_one_by_one(llama, corpus, tmp_path, counter):
    model, tok = llama
    _run(model, tok, [0, 1], corpus, tmp_path)
    spec = model_spec(model)
    deeper = ForwardCounter(spec.mlp_out(model, 2))
    shallower = ForwardCounter(spec.mlp_out(model, 1))
    both = _run(model, tok, [1, 2], corpus, tmp_path)  # only layer 2 is missing
    fresh = _run(model, tok, [1, 2], corpus, None, cache=False)
    assert deeper.calls > 0 and shallower.calls == deeper.calls  # one pass, computing layer 2 only
    assert len(_files(tmp_path)) == 3
    for i in (1, 2):
        torch.testing.assert_close(both[i][0], fresh[i][0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("change", ["budget", "max_length", "corpus", "tokenizer"])
def test_settings_change_recomputes(llama, corpus, tmp_path, counter, change):
    model, tok = llama
    _run(model, tok, [1], corpus, tmp_path)
    counter.calls = 0
    kw = {}
    if change == "budget":
        kw["max_tokens"] = BUDGET + 1
    elif change == "max_length":
        kw["max_length"] = 48
    elif change == "corpus":
        corpus = corpus[:-1] + [corpus[-1] + " Extra."]
    else:
        tok.add_tokens(["zzq"])
    _run(model, tok, [1], corpus, tmp_path, **kw)
    assert counter.calls > 0
    assert len(_files(tmp_path)) == 2


def test_weight_changes_recompute_only_what_they_move(llama, corpus, tmp_path, counter):
    model, tok = llama
    spec = model_spec(model)
    first = _run(model, tok, [1], corpus, tmp_path)

    def tweak(param):
        with torch.no_grad():
            param.add_(1e-3)

    # Layer 1's own output projection and later layers do not move layer 1's keys: still a hit.
    for param in [spec.mlp_out(model, 1).weight, *spec.layer(model, 2).parameters(), spec.final_norm(model).weight]:
        tweak(param)
        counter.calls = 0
        _same(first, _run(model, tok, [1], corpus, tmp_path))
        assert counter.calls == 0
    # Anything before the key does.
    before = [spec.mlp_out(model, 0).weight, next(spec.layer(model, 1).self_attn.parameters()),
              model.get_input_embeddings().weight]
    for param in before:
        tweak(param)
        counter.calls = 0
        changed = _run(model, tok, [1], corpus, tmp_path)
        assert counter.calls > 0
        assert not torch.equal(changed[1][0], first[1][0])
        first = changed


def _cache_file(cache_dir):
    (path,) = [p for p in cache_dir.iterdir() if "layer1" in p.name]
    return path


@pytest.mark.parametrize("damage", ["truncate", "flip_data", "flip_header", "empty"])
def test_damaged_file_is_recomputed_with_warning(llama, corpus, tmp_path, counter, damage):
    model, tok = llama
    first = _run(model, tok, [1], corpus, tmp_path)
    path = _cache_file(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip_data":
        data[-50] ^= 0x01  # one bit of the float64 sum
    elif damage == "flip_header":
        data[20] ^= 0xFF
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    counter.calls = 0
    with pytest.warns(StatsCacheWarning, match="recomputing"):
        again = _run(model, tok, [1], corpus, tmp_path)
    assert counter.calls > 0
    _same(first, again)
    counter.calls = 0
    _same(first, _run(model, tok, [1], corpus, tmp_path))  # the rewritten file is good again
    assert counter.calls == 0


def test_cache_false_touches_nothing(llama, corpus, tmp_path):
    model, tok = llama
    _run(model, tok, [1], corpus, tmp_path, cache=False)
    assert _files(tmp_path) == []


def test_default_dir_follows_env(llama, corpus, tmp_path, monkeypatch):
    model, tok = llama
    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path / "root"))
    _run(model, tok, [1], corpus, None)
    assert len(_files(tmp_path / "root" / "stats")) == 1
