"""Tensor pieces of GORA (experimental, see `gora`): reading node states, kNN cosine graphs, the
fixed-node graph edit distance, per-node change scores and the outlier rule.

Everything here is a pure function of tensors (or of a model it only reads), so the evaluator
can keep its cached unedited pieces and recompute just the edited side.
"""
from __future__ import annotations

import math

import torch

from ..editors import _text
from ..editors import keys as _keys
from .base import iter_batches
from .scoring import Query, model_device, read_prompts

SITES = ("block_out", "key", "final")


def state_rows(tokenizer, requests, site: str) -> list[_text.Row]:
    """One row per request, read at the subject's last token ("final": the prompt's last token,
    the position that predicts the answer), cut after the read position."""
    rows = _text.encode_rows(tokenizer, [_text.fill("{}", r.prompt, r.subject) for r in requests])
    if site == "final":
        rows = [_text.Row(r.ids, len(r.ids) - 1, []) for r in rows]
    return _text.through_lookup(rows)


@torch.no_grad()
def read_states(model, spec, tokenizer, requests, *, site: str, layer: int,
                batch_size: int) -> torch.Tensor:
    """[len(requests), d] float32 states at `site` of `layer`, on the CPU.

    Each batch is one right-padded forward that a hook stops right after `layer` (the blocks
    above never run); "key" is the input of `mlp_out(layer)`, the others the block output.
    """
    rows = state_rows(tokenizer, requests, site)
    device, pad = model_device(model), _text.pad_id(tokenizer)
    name = ("key", layer) if site == "key" else ("block", layer)
    where = {"keys": (layer,)} if site == "key" else {"blocks": (layer,)}
    parts = [_keys.read(model, spec, _text.pad(chunk, pad, device), **where)[name].cpu()
             for chunk in iter_batches(rows, batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def pair_logprobs(model, tokenizer, probes, *, batch_size: int) -> torch.Tensor:
    """[N, 2] mean per-token log-probs of (target_true, target_new) after each filled prompt,
    under teacher forcing; each prompt runs once and both targets continue from it."""
    queries = [Query(p.filled_prompt, (p.target_true, p.target_new)) for p in probes]
    readings = read_prompts(model, tokenizer, queries, batch_size=batch_size)
    return torch.tensor([[s.logprob for s in r.scores] for r in readings],
                        dtype=torch.float32).reshape(-1, 2)


def unit_rows(h: torch.Tensor) -> torch.Tensor:
    return h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def knn_adjacency(h: torch.Tensor, k: int) -> torch.Tensor:
    """[N, N] bool: i→j when j is one of i's k most cosine-similar other nodes (one matmul)."""
    u = unit_rows(h)
    sim = u @ u.T
    sim.fill_diagonal_(-math.inf)
    adj = torch.zeros(sim.shape, dtype=torch.bool)
    adj.scatter_(1, sim.topk(k, dim=1).indices, True)
    return adj


def edge_difference(a0: torch.Tensor, a1: torch.Tensor) -> int:
    """|E₀ Δ E₁|: the GED of two graphs on the same nodes with unit edge insert/delete costs."""
    return int((a0 ^ a1).sum())


def ego_ged(a0: torch.Tensor, a1: torch.Tensor, nodes: torch.Tensor) -> float:
    """|E₀ Δ E₁| among `nodes` / (|E₀| + |E₁| among them); 0 when neither graph has such edges."""
    s0, s1 = a0[nodes][:, nodes], a1[nodes][:, nodes]
    total = int(s0.sum()) + int(s1.sum())
    return edge_difference(s0, s1) / total if total else 0.0


def nearest(queries: torch.Tensor, nodes: torch.Tensor, k: int,
            exclude: torch.Tensor | None = None) -> list[list[int]]:
    """For each query, its (up to) k most cosine-similar nodes, skipping `exclude[q, j]`."""
    sim = unit_rows(queries) @ unit_rows(nodes).T
    if exclude is not None:
        sim = sim.masked_fill(exclude, -math.inf)
    top = sim.topk(min(k, nodes.shape[0]), dim=1)
    return [[int(j) for j, v in zip(idx, val) if v > -math.inf]
            for idx, val in zip(top.indices.tolist(), top.values.tolist())]


def change_scores(h0: torch.Tensor, h1: torch.Tensor) -> torch.Tensor:
    """dᵢ = ‖h¹ᵢ − h⁰ᵢ‖ / ‖h⁰ᵢ‖ (float64, so the z-scores of tiny changes stay meaningful)."""
    h0, h1 = h0.double(), h1.double()
    return (h1 - h0).norm(dim=-1) / h0.norm(dim=-1).clamp_min(1e-12)


def flag_outliers(d: torch.Tensor, *, z_threshold: float | None, top_q: float | None,
                  min_change: float) -> tuple[list[int], torch.Tensor]:
    """(flagged node indices, largest change first; z-scores of all nodes).

    `top_q` (a fraction of the nodes) replaces the z rule when given. Either way a node must
    have moved by more than `min_change`: without that floor, float noise on an unchanged
    model, or the top-q of all-zero scores, would be reported as damage.
    """
    std = d.std(unbiased=False) if d.numel() > 1 else d.new_zeros(())
    z = (d - d.mean()) / std if float(std) > 0 else torch.zeros_like(d)
    order = torch.argsort(d, descending=True, stable=True).tolist()
    if top_q is not None:
        chosen = order[:math.ceil(top_q * d.numel())]
    else:
        chosen = [i for i in order if float(z[i]) > z_threshold]
    return [i for i in chosen if float(d[i]) > min_change], z
