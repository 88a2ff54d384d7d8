"""An interrupted pass resumes from its checkpoint and ends with the uninterrupted result."""
from __future__ import annotations

import pytest
import torch
from stats_helpers import ForwardCounter, Killer

from seqedit.stats import StatsCacheWarning, second_moments
from seqedit.stats.corpus import pack, select

KW = {"max_tokens": 900, "max_length": 64, "batch_tokens": 128, "progress": False}


def _batches(tok, corpus) -> int:
    return len(pack(select(corpus, tok, KW["max_tokens"], KW["max_length"]), KW["batch_tokens"]))


def _killed_run(model, tok, corpus, cache_dir, after):
    killer = Killer(model, after=after)
    with pytest.raises(KeyboardInterrupt):
        second_moments(model, tok, [0, 2], corpus=corpus, cache_dir=cache_dir, checkpoint_every=0, **KW)
    killer.remove()


def test_resume_equals_clean_run(llama, corpus, tmp_path):
    model, tok = llama
    n = _batches(tok, corpus)
    assert n >= 6
    clean = second_moments(model, tok, [0, 2], corpus=corpus, cache=False, **KW)

    _killed_run(model, tok, corpus, tmp_path, after=4)
    assert any("partial" in p.name for p in tmp_path.iterdir())
    counter = ForwardCounter(model)
    resumed = second_moments(model, tok, [0, 2], corpus=corpus, cache_dir=tmp_path, checkpoint_every=0, **KW)
    counter.remove()
    assert counter.calls == n - 4  # picked up after the 4 batches it had checkpointed
    assert not any("partial" in p.name for p in tmp_path.iterdir())
    for i in (0, 2):
        assert resumed[i][1] == clean[i][1] == KW["max_tokens"]
        torch.testing.assert_close(resumed[i][0], clean[i][0], rtol=1e-13, atol=0)


def test_two_kills_then_resume(llama, corpus, tmp_path):
    model, tok = llama
    n = _batches(tok, corpus)
    clean = second_moments(model, tok, [0, 2], corpus=corpus, cache=False, **KW)
    _killed_run(model, tok, corpus, tmp_path, after=2)
    _killed_run(model, tok, corpus, tmp_path, after=2)  # resumes at 2, dies at 4
    counter = ForwardCounter(model)
    resumed = second_moments(model, tok, [0, 2], corpus=corpus, cache_dir=tmp_path, **KW)
    counter.remove()
    assert counter.calls == n - 4
    for i in (0, 2):
        torch.testing.assert_close(resumed[i][0], clean[i][0], rtol=1e-13, atol=0)


def test_damaged_checkpoint_restarts_from_scratch(llama, corpus, tmp_path):
    model, tok = llama
    n = _batches(tok, corpus)
    clean = second_moments(model, tok, [0, 2], corpus=corpus, cache=False, **KW)
    _killed_run(model, tok, corpus, tmp_path, after=3)
    (partial,) = [p for p in tmp_path.iterdir() if "partial" in p.name]
    data = bytearray(partial.read_bytes())
    data[-8] ^= 0x10
    partial.write_bytes(bytes(data))
    counter = ForwardCounter(model)
    with pytest.warns(StatsCacheWarning):
        resumed = second_moments(model, tok, [0, 2], corpus=corpus, cache_dir=tmp_path, **KW)
    counter.remove()
    assert counter.calls == n
    for i in (0, 2):
        torch.testing.assert_close(resumed[i][0], clean[i][0], rtol=1e-13, atol=0)


def test_checkpoint_of_other_settings_is_not_used(llama, corpus, tmp_path):
    model, tok = llama
    _killed_run(model, tok, corpus, tmp_path, after=3)
    counter = ForwardCounter(model)
    # Another batch size is another plan: the old checkpoint does not apply to it.
    second_moments(model, tok, [0, 2], corpus=corpus, cache_dir=tmp_path, **{**KW, "batch_tokens": 256})
    counter.remove()
    n = len(pack(select(corpus, tok, KW["max_tokens"], KW["max_length"]), 256))
    assert counter.calls == n
