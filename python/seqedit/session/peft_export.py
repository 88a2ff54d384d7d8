"""Accumulated ΔW of a session as a PEFT LoRA adapter (written without importing peft).

Per edited weight, ΔW = Σ_i U_i V_iᵀ is refactored exactly: stack the factors, QR both sides,
SVD of the small core (`seqedit.ops.top_singular_factored`), then lora_B = U·S^½ and
lora_A = S^½·Vᵀ, with lora_alpha = r so PEFT's scaling is 1. Layers whose rank is below the
adapter's r are padded with zero columns, which changes nothing.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from .. import ops
from .._atomic import write_atomic

_EPS32 = torch.finfo(torch.float32).eps


def _refactor(us: list[torch.Tensor], vs: list[torch.Tensor], rank: int | None):
    u = torch.cat([x.double() for x in us], dim=1)
    v = torch.cat([x.double() for x in vs], dim=1)
    m, n, k = u.shape[0], v.shape[0], u.shape[1]
    s, left, right = ops.top_singular_factored(u, v, min(k, m, n))
    # Singular values below float32 rounding of the largest are noise of the stacking, not rank.
    floor = float(s[0]) * max(m, n) * _EPS32 if len(s) else 0.0
    accumulated = int((s > floor).sum())
    kept = accumulated if rank is None else min(rank, accumulated)
    total = float(s.square().sum())
    error = math.sqrt(float(s[kept:].square().sum()) / total) if total > 0 else 0.0
    root = s[:kept].sqrt()
    return left[:, :kept] * root, (right[:, :kept] * root).T, accumulated, kept, error


def _module_kind(model: torch.nn.Module, module_name: str) -> bool:
    """fan_in_fan_out for this module: False for nn.Linear, True for GPT-2's Conv1D."""
    module = model.get_submodule(module_name)
    if isinstance(module, torch.nn.Linear):
        return False
    if type(module).__name__ == "Conv1D":
        return True
    raise ValueError(f"cannot export {module_name} as LoRA: it is a {type(module).__name__}, "
                     "PEFT LoRA here supports nn.Linear and transformers' Conv1D")


def write_adapter(directory: str | Path, model: torch.nn.Module,
                  factors: dict[str, tuple[list[torch.Tensor], list[torch.Tensor], int]], *,
                  rank: int | None = None) -> dict[str, Any]:
    """`factors`: parameter name -> (U_i list, V_i list, number of edits). Returns the report."""
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None (exact), got {rank!r}")
    pieces, layers = {}, {}
    for name, (us, vs, edits) in factors.items():
        if not name.endswith(".weight"):
            raise ValueError(f"cannot export {name} as LoRA: only module weights can be targeted")
        module = name[: -len(".weight")]
        b, a, accumulated, kept, error = _refactor(us, vs, rank)
        if kept == 0:
            continue  # the live edits cancel out on this weight
        pieces[module] = (b, a, _module_kind(model, module))
        layers[module] = {"edits": edits, "rank_accumulated": accumulated, "rank_kept": kept,
                          "rel_fro_error": error}
    if not pieces:
        raise ValueError("nothing to export: the session has no live edits that change a weight")
    flags = {fan for _, _, fan in pieces.values()}
    if len(flags) > 1:
        raise ValueError("cannot export one adapter over both nn.Linear and Conv1D modules: PEFT "
                         "has a single fan_in_fan_out flag per adapter")
    r = max(info["rank_kept"] for info in layers.values())
    tensors = {}
    for module, (b, a, _) in pieces.items():
        pad = r - b.shape[1]
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.nn.functional.pad(
            b, (0, pad)).float().contiguous()
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.nn.functional.pad(
            a, (0, 0, 0, pad)).float().contiguous()
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None),
        "r": r, "lora_alpha": r, "lora_dropout": 0.0, "target_modules": sorted(pieces),
        "fan_in_fan_out": flags.pop(), "bias": "none", "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "rank_pattern": {}, "alpha_pattern": {},
    }
    worst = max(info["rel_fro_error"] for info in layers.values())
    report = {"r": r, "requested_rank": rank, "max_rel_fro_error": worst,
              "exact": all(i["rank_kept"] == i["rank_accumulated"] for i in layers.values()),
              "fan_in_fan_out": config["fan_in_fan_out"],
              "layers": layers}
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "adapter_model.safetensors",
                 safetensors.torch.save(tensors, metadata={"format": "pt"}))
    write_atomic(out / "adapter_config.json", json.dumps(config, indent=2).encode())
    write_atomic(out / "seqedit_export.json", json.dumps(report, indent=2).encode())
    write_atomic(out / "README.md", _readme(report).encode())
    report["directory"] = str(out)
    return report


def _readme(report: dict[str, Any]) -> str:
    lines = [
        "# seqedit edits as a LoRA adapter", "",
        "The accumulated weight change of a seqedit EditSession's live edits, refactored as",
        f"lora_B @ lora_A with r = {report['r']} and lora_alpha = r (scaling 1).",
        "Load with `peft.PeftModel.from_pretrained(base_model, this_dir)` on the unedited base model.",
        "",
        "Truncation: " + ("none, the factorisation is exact (to float rounding)." if report["exact"]
                          else f"rank {report['requested_rank']} per layer; relative Frobenius error "
                               f"‖ΔW − ΔW_r‖/‖ΔW‖ up to {report['max_rel_fro_error']:.3e}."),
        "", "| module | edits | accumulated rank | kept rank | relative Frobenius error |",
        "|---|---|---|---|---|",
    ]
    for module, info in report["layers"].items():
        lines.append(f"| {module} | {info['edits']} | {info['rank_accumulated']} | "
                     f"{info['rank_kept']} | {info['rel_fro_error']:.3e} |")
    return "\n".join(lines) + "\n"
