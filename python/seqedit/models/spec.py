"""`ModelSpec`: where a causal LM keeps the parts that locate-then-edit methods touch.

Everything is found from the module structure, never from the model's class name or
`config.model_type`, so a wrapped, renamed or subclassed model works as long as its layout does:

- **decoder blocks**: the longest `nn.ModuleList` whose every item holds an MLP, at the same
  relative place in each item;
- **MLP**: a direct child of a block that owns an output projection: an `nn.Linear` or a GPT-2
  `Conv1D` under one of the attribute names in `_MLP_OUT_NAMES` (Llama/Mistral/Qwen2/Gemma
  `down_proj`, GPT-2 `c_proj`, GPT-J `fc_out`, GPT-NeoX `dense_4h_to_h`). GPT-2's attention has a
  `c_proj` too, so when a block has several candidates the one that *narrows* (inner width >
  block width) wins; only if that does not decide (an MLP with inner width = block width) does a
  child called `mlp`/`feed_forward`/`ffn` win;
- **orientation**: `Conv1D` stores `[in, out]` (`mlp_out_transposed=True`); `nn.Linear` `[out, in]`;
- **final norm**: the first module registered after the block list in the same parent whose only
  parameters are a 1-D weight (and bias) of the hidden width — LayerNorm/RMSNorm-shaped;
- **LM head**: `get_output_embeddings()` of the (outermost) transformers model inside; tied when its
  weight is the very Parameter of the input embeddings.

Default layers
--------------
`default_edit_layers(n=5)`: a contiguous band of `n` layers starting at `round_half_up(L / 8)`,
shifted down so it ends inside the model (start = min(round(L/8), L - n)); when `L < n` all layers.
This is the early-middle band MEMIT-style methods edit: L=32 → 4..8, L=30 (SmolLM2-135M) → 4..8,
L=28 → 4..8, L=18 (Gemma-3-270M) → 2..6, L=12 → 2..6, L=4 → 0..3.

`default_rome_layer()`: the second layer of that 5-layer band (start + 1, capped at L-1): L=32 → 5
(the layer EasyEdit uses for Llama-7B), L=28 → 5 (ROME's GPT-J layer), L=30 → 5, L=18 → 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Attribute names of MLP output projections ("down" projections) in the supported families.
_MLP_OUT_NAMES = ("down_proj", "c_proj", "fc_out", "dense_4h_to_h")
# Only used to break a tie when a block has two candidates of equal shape (GPT-2 with n_inner=n_embd).
_MLP_CHILD_NAMES = ("mlp", "feed_forward", "ffn")


class UnsupportedArchitectureError(ValueError):
    """The model's layout has no recognisable decoder blocks / MLP projection / final norm / LM head."""


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers absent or moved: then no model can contain one
        return None
    return Conv1D


def _projection_shape(module: nn.Module) -> tuple[int, int, bool] | None:
    """(in_width, out_width, transposed) of a linear-like module, None for anything else."""
    conv1d = _conv1d_class()
    if conv1d is not None and isinstance(module, conv1d):
        n_in, n_out = module.weight.shape
        return int(n_in), int(n_out), True
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    return None


@dataclass(frozen=True)
class _MlpLayout:
    mlp_rel: str            # path of the MLP inside a block, e.g. "mlp"
    out_rel: str            # path of its output projection inside the MLP, e.g. "down_proj"
    d_in: int
    d_out: int
    transposed: bool


def _mlp_in_block(block: nn.Module) -> _MlpLayout | None:
    candidates = []
    for child_name, child in block.named_children():
        for proj_name in _MLP_OUT_NAMES:
            proj = getattr(child, proj_name, None)
            shape = _projection_shape(proj) if isinstance(proj, nn.Module) else None
            if shape is not None:
                candidates.append(_MlpLayout(child_name, proj_name, *shape))
    if not candidates:
        return None
    narrowing = [c for c in candidates if c.d_in > c.d_out]
    if len(narrowing) == 1:
        return narrowing[0]
    named = [c for c in candidates if c.mlp_rel in _MLP_CHILD_NAMES]
    if len(named) == 1:
        return named[0]
    return candidates[0] if len(candidates) == 1 else None


def _find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList, _MlpLayout]:
    best = None
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        layouts = [_mlp_in_block(block) for block in module]
        if any(lay is None for lay in layouts):
            continue
        first = layouts[0]
        if any((lay.mlp_rel, lay.out_rel, lay.d_in, lay.d_out, lay.transposed)
               != (first.mlp_rel, first.out_rel, first.d_in, first.d_out, first.transposed)
               for lay in layouts):
            continue
        if best is None or len(module) > len(best[1]):
            best = (path, module, first)
    if best is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: found no nn.ModuleList of decoder blocks each holding an MLP "
            f"with an output projection (nn.Linear or transformers Conv1D) named one of "
            f"{', '.join(_MLP_OUT_NAMES)}. Supported layouts: Llama/Mistral/Qwen2/Gemma (mlp.down_proj), "
            f"GPT-2 (mlp.c_proj, Conv1D), GPT-J (mlp.fc_out), GPT-NeoX (mlp.dense_4h_to_h).")
    return best


def _is_norm_like(module: nn.Module, width: int) -> bool:
    params = dict(module.named_parameters(recurse=True))
    if "weight" not in params or set(params) - {"weight", "bias"}:
        return False
    return all(p.dim() == 1 and p.shape[0] == width for p in params.values())


def _find_final_norm(model: nn.Module, layers_path: str, width: int) -> str:
    parent_path, _, list_name = layers_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    after = False
    for name, child in parent.named_children():
        if name == list_name:
            after = True
        elif after and _is_norm_like(child, width):
            return f"{parent_path}.{name}" if parent_path else name
    raise UnsupportedArchitectureError(
        f"{type(model).__name__}: no final norm after {layers_path!r}: looked for a module registered "
        f"after it in {parent_path or 'the model'} whose only parameters are a weight (and bias) of "
        f"width {width}.")


def _find_lm_head(model: nn.Module) -> tuple[str, nn.Module, bool]:
    owner = next((m for m in model.modules() if callable(getattr(m, "get_output_embeddings", None))
                  and m.get_output_embeddings() is not None), None)
    if owner is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: no LM head: no submodule's get_output_embeddings() returned a module.")
    head = owner.get_output_embeddings()
    path = next((p for p, m in model.named_modules() if m is head), None)
    if path is None:
        raise UnsupportedArchitectureError(f"{type(model).__name__}: the LM head is not a submodule of the model.")
    embed = owner.get_input_embeddings() if callable(getattr(owner, "get_input_embeddings", None)) else None
    tied = embed is not None and getattr(head, "weight", None) is getattr(embed, "weight", object())
    return path, head, tied


def _max_positions(model: nn.Module) -> int | None:
    config = next((m.config for m in model.modules() if hasattr(m, "config")), None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _family(model: nn.Module) -> str:
    config = next((m.config for m in model.modules() if hasattr(m, "config")), None)
    return str(getattr(config, "model_type", None) or type(model).__name__)


@dataclass(frozen=True)
class ModelSpec:
    """Paths (relative to the model `spec()` was given) of the parts editors read and write.

    Conventions: "block output of layer i" = the hidden states `layer(model, i)` returns — read them
    with `block_hidden(output)`, because transformers 5 blocks return a bare tensor (Llama, GPT-2,
    Qwen2, Gemma 3, GPT-NeoX) where older ones, and GPT-J still, return a tuple; "key at layer i" =
    input of `mlp_out(model, i)`; "MLP output at layer i" = output of `mlp_out(model, i)`.
    """

    arch: str
    num_layers: int
    hidden_size: int
    mlp_hidden_size: int
    max_positions: int | None
    layers_path: str
    mlp_path_template: str
    mlp_out_template: str
    mlp_out_transposed: bool
    final_norm_path: str
    lm_head_path: str
    tied_lm_head: bool
    # The final norm carries a bias: LayerNorm-normalised residual streams (GPT-2, GPT-J, NeoX),
    # as opposed to RMSNorm ones (Llama, Qwen2, Gemma); editors' defaults follow this.
    norm_bias: bool = False

    def _index(self, i: int) -> int:
        if not -self.num_layers <= i < self.num_layers:
            raise IndexError(f"layer {i} out of range for a model with {self.num_layers} layers")
        return i % self.num_layers

    def layer(self, model: nn.Module, i: int) -> nn.Module:
        return model.get_submodule(f"{self.layers_path}.{self._index(i)}")

    def mlp(self, model: nn.Module, i: int) -> nn.Module:
        return model.get_submodule(self.mlp_path_template.format(self._index(i)))

    def mlp_out(self, model: nn.Module, i: int) -> nn.Module:
        return model.get_submodule(self.mlp_out_template.format(self._index(i)))

    def mlp_out_weight_name(self, i: int) -> str:
        return self.mlp_out_template.format(self._index(i)) + ".weight"

    def final_norm(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.final_norm_path)

    def lm_head(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.lm_head_path)

    @staticmethod
    def block_hidden(output) -> torch.Tensor:
        """The hidden states in a decoder block's forward output (a tensor, or a tuple led by it)."""
        return output if isinstance(output, torch.Tensor) else output[0]

    @staticmethod
    def with_block_hidden(output, hidden: torch.Tensor):
        """`output` with its hidden states replaced by `hidden`, in the same form (for forward hooks)."""
        if isinstance(output, torch.Tensor):
            return hidden
        return (hidden, *output[1:])

    def default_edit_layers(self, n: int = 5) -> list[int]:
        """`n` consecutive layers from round_half_up(L/8), kept inside the model (module docstring)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        n = min(n, self.num_layers)
        start = min(int(self.num_layers / 8 + 0.5), self.num_layers - n)
        return list(range(start, start + n))

    def default_rome_layer(self) -> int:
        """Second layer of the default 5-layer band (module docstring)."""
        return min(self.default_edit_layers(5)[0] + 1, self.num_layers - 1)


def spec(model: nn.Module) -> ModelSpec:
    """Infer the `ModelSpec` of `model` from its module structure (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"spec() needs a torch.nn.Module, got {type(model).__name__}")
    layers_path, blocks, layout = _find_blocks(model)
    mlp_template = f"{layers_path}.{{}}.{layout.mlp_rel}"
    final_norm_path = _find_final_norm(model, layers_path, layout.d_out)
    lm_head_path, _, tied = _find_lm_head(model)
    return ModelSpec(
        arch=_family(model),
        num_layers=len(blocks),
        hidden_size=layout.d_out,
        mlp_hidden_size=layout.d_in,
        max_positions=_max_positions(model),
        layers_path=layers_path,
        mlp_path_template=mlp_template,
        mlp_out_template=f"{mlp_template}.{layout.out_rel}",
        mlp_out_transposed=layout.transposed,
        final_norm_path=final_norm_path,
        lm_head_path=lm_head_path,
        tied_lm_head=tied,
        norm_bias=getattr(model.get_submodule(final_norm_path), "bias", None) is not None,
    )


__all__ = ["ModelSpec", "UnsupportedArchitectureError", "spec"]
