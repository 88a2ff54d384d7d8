"""Replaying the upper layers on the positions that δ can reach, and nothing else.

δ is added at each row's lookup position p. With causal attention nothing before p depends on
δ, at any layer; so every step only needs the "suffix" positions p..end of each row, attending
to keys/values that are fixed for positions < p (read once from the initial forward) and
recomputed for positions ≥ p. Rows are batched by gathering Q = max suffix length query slots
per row; the layer's own attention code runs unchanged, handed a minimal cache object whose
`update` returns the stored keys/values with the new ones scattered at their true positions.
Padded query slots get their keys/values written to Q extra masked columns, so they touch no
real position; their mask row is copied from a real position so no softmax row is empty (an
empty row would make NaNs that 0-weights cannot cancel).

Everything model-specific is taken from what the model itself passed to each layer in the
initial forward (mask, rotary tables, position ids), gathered at the suffix positions. When the
layers look unfamiliar (no cache argument, a mask that is not a dense 4-D tensor, a sliding
cache shorter than the batch) `SuffixReplay.build` returns None and the caller replays full rows.
"""
from __future__ import annotations

import inspect

import torch

_CACHE_ARGS = ("past_key_values", "layer_past", "past_key_value")
_PER_ROW = ("attention_mask", "position_embeddings", "position_ids")  # what _gather_kwargs gathers per row


class _PrefixKV:
    """Duck-typed cache: returns stored K/V [N,h,T+Q,hd] with this step's K/V scattered in."""

    def __init__(self, kv: dict[int, tuple[torch.Tensor, torch.Tensor]], slots: torch.Tensor):
        self.kv, self.slots = kv, slots

    def update(self, k, v, layer_idx, *args, **kwargs):
        k_all, v_all = self.kv[layer_idx]
        idx = self.slots[:, None, :, None].expand(k.shape[0], k.shape[1], k.shape[2], k.shape[3])
        return k_all.scatter(2, idx, k.to(k_all.dtype)), v_all.scatter(2, idx, v.to(v_all.dtype))


class SuffixReplay:
    def __init__(self, layers, slot_pos, slots, kv, cache_name):
        self.layers = layers  # [(index, module, bound kwargs with the suffix mask/positions)]
        self.slot_pos = slot_pos  # [N, Q] the position each query slot reads (clamped into the row)
        self.slots = slots
        self.kv = kv
        self.cache_name = cache_name

    @classmethod
    def build(cls, model, layer_modules, calls, cache, lookup, lengths, width):
        """`calls[i]` = (args, kwargs) the model passed to layer i after the hidden states."""
        n = lookup.shape[0]
        q = int((lengths - lookup).max())
        j = torch.arange(q, device=lookup.device)
        pos = lookup[:, None] + j
        valid = pos < lengths[:, None]
        slot_pos = torch.where(valid, pos, (lengths - 1)[:, None].expand(n, q))
        slots = torch.where(valid, pos, width + j)  # padded slots write to extra columns
        layers, kv, cache_name = [], {}, _CACHE_ARGS[0]
        for i, module in layer_modules:
            args, kwargs = calls[i]
            try:
                bound = inspect.signature(module.forward).bind(None, *args, **kwargs)
            except TypeError:
                return None
            named = dict(bound.arguments)
            for param in bound.signature.parameters.values():
                if param.kind is inspect.Parameter.VAR_KEYWORD:
                    named.update(named.pop(param.name, None) or {})
                elif param.kind is inspect.Parameter.VAR_POSITIONAL and named.get(param.name):
                    return None
            named.pop(next(iter(bound.signature.parameters)))  # the hidden states
            cache_name = next((c for c in _CACHE_ARGS if c in bound.signature.parameters), None)
            layer_idx = getattr(_attention(module), "layer_idx", None)
            if cache_name is None or layer_idx is None or layer_idx >= len(getattr(cache, "layers", [])):
                return None
            k, v = cache.layers[layer_idx].keys, cache.layers[layer_idx].values
            if k is None or k.dim() != 4 or k.shape[2] != width or k.shape[0] != n:
                return None
            pad = k.new_zeros(k.shape[0], k.shape[1], q, k.shape[3])
            kv[layer_idx] = (torch.cat([k, pad], 2), torch.cat([v, pad.new_zeros(v.shape[:2] + (q, v.shape[3]))], 2))
            named = _gather_kwargs(named, slot_pos, width, q, model)
            if named is None:
                return None
            layers.append((i, module, named))
        return cls(layers, slot_pos, slots, kv, cache_name)

    def run(self, h: torch.Tensor) -> torch.Tensor:
        cache = _PrefixKV(self.kv, self.slots)
        for _, module, named in self.layers:
            out = module(h, **{**named, self.cache_name: cache})
            h = out[0] if isinstance(out, tuple) else out
        return h

    def rows(self, idx: torch.Tensor) -> SuffixReplay:
        """The same replay on the rows `idx` only (each row's computation is its own)."""
        layers = [(i, module, {k: _take(v, idx) if k in _PER_ROW else v for k, v in named.items()})
                  for i, module, named in self.layers]
        kv = {layer: (k[idx], v[idx]) for layer, (k, v) in self.kv.items()}
        return SuffixReplay(layers, self.slot_pos[idx], self.slots[idx], kv, self.cache_name)

    def gather(self, full: torch.Tensor) -> torch.Tensor:
        """[N, T, d] → [N, Q, d] at the slots' positions."""
        return full.gather(1, self.slot_pos[:, :, None].expand(-1, -1, full.shape[-1]))


def _take(value, idx):
    if isinstance(value, torch.Tensor):
        return value[idx]
    if isinstance(value, tuple):
        return tuple(t[idx] for t in value)
    return value


def _attention(module):
    for name in ("self_attn", "attn", "attention"):
        if hasattr(module, name):
            return getattr(module, name)
    return None


def _gather_kwargs(named: dict, slot_pos, width: int, q: int, model):
    out = dict(named)
    mask = named.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[-1] != width or mask.shape[-2] != width:
        return None  # None masks (is_causal shortcuts), block masks, 2-D flash masks: not handled
    n = slot_pos.shape[0]
    rows = mask.expand(n, -1, -1, -1).gather(2, slot_pos[:, None, :, None].expand(n, mask.shape[1], q, width))
    if mask.dtype == torch.bool:
        blocked = torch.zeros(n, mask.shape[1], q, q, dtype=torch.bool, device=mask.device)
    else:
        blocked = torch.full((n, mask.shape[1], q, q), torch.finfo(mask.dtype).min, dtype=mask.dtype,
                             device=mask.device)
    out["attention_mask"] = torch.cat([rows, blocked], -1)
    pe = named.get("position_embeddings")
    if pe is not None:
        if not (isinstance(pe, tuple) and all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in pe)):
            return None
        out["position_embeddings"] = tuple(
            t.expand(n, -1, -1).gather(1, slot_pos[:, :, None].expand(n, q, t.shape[-1])) for t in pe
        )
    pid = named.get("position_ids")
    if isinstance(pid, torch.Tensor):
        out["position_ids"] = pid.expand(n, -1).gather(1, slot_pos)
    if isinstance(named.get("cache_position"), torch.Tensor):
        out["cache_position"] = slot_pos[0]
    for key, value in named.items():
        if key in out and out[key] is value and isinstance(value, torch.Tensor) and width in value.shape:
            return None  # an unknown per-position argument we would have to gather
    return out
