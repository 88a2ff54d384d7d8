"""Two gloo ranks on the CPU give the single-process statistic."""
from __future__ import annotations

import multiprocessing
import socket

import pytest
import torch
from dist_worker import KW, LAYERS, run

from seqedit.models import tiny
from seqedit.stats import second_moments


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


needs_fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")


def _launch(tmp_path, cache_dir, seeds=(0, 0)) -> None:
    # Forked children inherit the imported torch/transformers: no 2x interpreter start-up.
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=run, args=(r, 2, port, str(tmp_path), str(cache_dir), seeds[r])) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0, f"rank exited with {p.exitcode}"


@needs_fork
def test_two_ranks_equal_one_process(corpus, tmp_path):
    cache_dir = tmp_path / "cache"
    _launch(tmp_path, cache_dir)

    model, tok = tiny("llama", seed=0)
    single = second_moments(model, tok, LAYERS, corpus=corpus, cache=False, **KW)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for i in LAYERS:
        for got in ranks:
            assert got[i][1] == single[i][1] == KW["max_tokens"]
            # The same keys summed in another order: equal to float64 rounding.
            torch.testing.assert_close(got[i][0], single[i][0], rtol=1e-12, atol=1e-15)
    # Rank 0 wrote the cache; no checkpoint was left behind; a later single process hits it.
    names = sorted(p.name for p in cache_dir.iterdir())
    assert len(names) == len(LAYERS) and not any("partial" in n for n in names)
    cached = second_moments(model, tok, LAYERS, corpus=corpus, cache_dir=cache_dir, **KW)
    for i in LAYERS:
        torch.testing.assert_close(cached[i][0], ranks[0][i][0], rtol=0, atol=0)


@needs_fork
def test_ranks_with_different_models_fail_together(tmp_path):
    _launch(tmp_path, tmp_path / "cache", seeds=(0, 1))
    for r in range(2):
        assert "ranks disagree" in (tmp_path / f"rank{r}.err").read_text()
