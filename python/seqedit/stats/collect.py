"""One forward pass per batch that captures the keys of every requested layer.

The forward is cut short by raising `_StopForward` from the hook of the last requested layer. The
alternative — calling the decoder blocks by hand — would have to rebuild what each architecture's
forward prepares (rotary tables, causal/sliding-window masks, cache positions, GPT-2's learned
positions) and would break whenever transformers changes those internals. The hook only relies on
the contract "key at layer i = input of spec.mlp_out(model, i)", and the exception costs one raise
per batch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .corpus import Batch


class _StopForward(Exception):
    """Raised inside the model once the deepest requested key has been captured."""


class KeyCapture:
    """Forward pre-hooks on the MLP output projections of `layers`.

    Keys of padding positions are dropped inside the hook, so only real tokens' keys stay alive
    until accumulation.
    """

    def __init__(self, modules: dict[int, nn.Module]):
        self.layers = sorted(modules)
        self._last = self.layers[-1]
        self._index: torch.Tensor | None = None
        self.keys: dict[int, torch.Tensor] = {}
        self._handles = [m.register_forward_pre_hook(self._hook(i)) for i, m in modules.items()]

    def _hook(self, layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if not args or not torch.is_tensor(args[0]):
                raise RuntimeError(f"layer {layer}: the MLP output projection was called without a tensor input")
            if layer in self.keys:
                raise RuntimeError(
                    f"layer {layer}: the MLP output projection ran twice in one forward; "
                    "key statistics need exactly one call per token (mixture-of-experts layers are not supported)"
                )
            x = args[0]
            flat = x.reshape(-1, x.shape[-1])
            index = self._index.to(flat.device, non_blocking=True)
            self.keys[layer] = flat.index_select(0, index)
            if layer == self._last:
                raise _StopForward

        return hook

    def run(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[int, torch.Tensor]:
        """Keys [n_real_tokens, d_in] of each layer for one batch."""
        self.keys = {}
        self._index = attention_mask.reshape(-1).nonzero().squeeze(1)
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        missing = [i for i in self.layers if i not in self.keys]
        if missing:
            raise RuntimeError(f"layers {missing}: the MLP output projection never ran during the forward")
        keys, self.keys = self.keys, {}
        return keys

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def accumulate(model: nn.Module, modules: dict[int, nn.Module], batches: Sequence[Batch],
               sums: dict[int, torch.Tensor], on_batch: Callable[[int], None]) -> None:
    """`sums[l] += Σ kkᵀ` over all real tokens of `batches`; `on_batch(tokens)` after each batch.

    Accumulation is one `second_moment_list_` call per batch and device for all layers.
    """
    from seqedit import ops

    device = model.get_input_embeddings().weight.device
    by_device: dict[torch.device, list[int]] = {}  # a model split over devices: one call per device
    for layer in sorted(modules):
        by_device.setdefault(sums[layer].device, []).append(layer)
    # Dropout in a model left in training mode would make the keys random and the result
    # irreproducible; run in eval mode and give every module its own mode back afterwards.
    modes = {m: m.training for m in model.modules()}
    model.eval()
    capture = KeyCapture(modules)
    try:
        with torch.no_grad():
            for batch in batches:
                ids, mask = batch.inputs()
                keys = capture.run(model, ids.to(device), mask.to(device))
                for group in by_device.values():
                    fused = [i for i in group if keys[i].dtype != torch.float64]
                    ops.second_moment_list_([sums[i] for i in fused], [keys[i] for i in fused])
                    for i in group:
                        if keys[i].dtype == torch.float64:
                            # The op forms products in float32; a float64 model keeps its precision.
                            sums[i].addmm_(keys[i].T, keys[i])
                del keys
                on_batch(batch.tokens)
    finally:
        capture.remove()
        for m, training in modes.items():
            m.training = training
