"""`load()`: one entry point for the packaged real models, local Hugging Face directories and single
safetensors checkpoints. Offline only: every transformers call gets `local_files_only=True`, and a
name that is neither a packaged model nor an existing path is an error, never a Hub lookup.

Weights are read from safetensors, or from `.bin` files only through `weights_only=True`. A checkpoint
that leaves any parameter uninitialised or has extra or mis-shaped tensors is rejected: a silently
random layer would make every edit result meaningless.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .packaged import PACKAGED, ModelUnavailableError, ensure_converted


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model its config describes."""


def _resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype or its name (e.g. 'bfloat16'), got {dtype!r}")
    return value


def _check_loading_info(info: dict, source) -> None:
    problems = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{k}: {', '.join(map(str, v[:5]))}{' ...' if len(v) > 5 else ''}"
                           for k, v in problems.items())
        raise CheckpointMismatchError(f"{source}: the checkpoint does not match its config ({detail})")


def _load_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelUnavailableError(
            f"no usable tokenizer in {directory} (expected tokenizer.json or the files of a slow "
            f"tokenizer next to config.json): {err}") from err
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def _from_directory(directory: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    if not (directory / "config.json").is_file():
        raise ModelUnavailableError(f"{directory} is not a Hugging Face model directory: it has no config.json")
    model, info = AutoModelForCausalLM.from_pretrained(
        str(directory), local_files_only=True, dtype=dtype, weights_only=True, output_loading_info=True)
    _check_loading_info(info, directory)
    return model, _load_tokenizer(directory)


def _from_safetensors_file(path: Path, dtype: torch.dtype):
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    directory = path.parent
    if not (directory / "config.json").is_file():
        raise ModelUnavailableError(f"{path} needs a config.json next to it (in {directory}) to know its architecture")
    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise ModelUnavailableError(f"{directory / 'config.json'}: {type(config).__name__} has no causal-LM class") from None
    # Passing the state dict (not a path) lets transformers tie weights and skip random init as usual.
    model, info = model_class.from_pretrained(
        None, config=config, state_dict=load_file(str(path)), dtype=dtype, output_loading_info=True)
    _check_loading_info(info, path)
    return model, _load_tokenizer(directory)


def load(name_or_path: str | Path = "smollm2-135m", *, dtype=None, device=None):
    """Load a causal LM and its tokenizer, offline, in eval mode with every parameter frozen.

    `name_or_path`: a packaged model name (`"smollm2-135m"`, `"gemma3-270m"`), a local Hugging Face
    model directory, or a `.safetensors` file with `config.json` (and tokenizer files) beside it.
    `dtype` defaults to float32; `device` to where transformers put it (CPU).
    The tokenizer pads on the right and always has a pad token (eos when the checkpoint names none).
    """
    dtype = _resolve_dtype(dtype)
    key = str(name_or_path)
    if key in PACKAGED:
        model, tokenizer = _from_directory(ensure_converted(PACKAGED[key]), dtype)
    else:
        path = Path(key).expanduser()
        if path.is_dir():
            model, tokenizer = _from_directory(path, dtype)
        elif path.is_file() and path.suffix == ".safetensors":
            model, tokenizer = _from_safetensors_file(path, dtype)
        elif path.exists():
            raise ModelUnavailableError(f"{path}: expected a model directory or a .safetensors file")
        else:
            raise ModelUnavailableError(
                f"{key!r} is neither a packaged model ({', '.join(PACKAGED)}) nor an existing path; "
                f"seqedit never downloads models")
    if device is not None:
        model.to(device)
    model.eval().requires_grad_(False)
    return model, tokenizer


__all__ = ["CheckpointMismatchError", "load"]
