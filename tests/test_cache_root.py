"""One cache root for converted models and key statistics."""
from __future__ import annotations

import seqedit.models
from seqedit._cache_root import cache_root
from seqedit.stats import cache as stats_cache


def test_models_and_stats_share_the_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path / "c"))
    assert seqedit.models.cache_root() == cache_root() == tmp_path / "c"
    assert stats_cache.default_dir() == tmp_path / "c" / "stats"


def test_unset_or_empty_variable_means_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SEQEDIT_CACHE", "")
    assert cache_root() == tmp_path / ".cache" / "seqedit"
    monkeypatch.delenv("SEQEDIT_CACHE")
    assert stats_cache.default_dir() == tmp_path / ".cache" / "seqedit" / "stats"
    monkeypatch.setenv("SEQEDIT_CACHE", "~/elsewhere")
    assert cache_root() == tmp_path / "elsewhere"
