"""GORA (EXPERIMENTAL): hidden-space ripple damage of edits, after arXiv 2403.07825.

The paper (v1 "GORA/SORA", later "GIE/SIR") has no public code and its method text was not
recovered, so this is our own reconstruction (a design of this project) and every number is
labelled `experimental=True`. `docs/protocol.md` (section `gora`) gives the exact definitions.

Nodes are N fixed probe facts (default: the first 200 CounterFact *train* records, disjoint from
the edit split). Each node's state h is read at one site of one layer: the residual stream after
block `layer` at the subject's last token ("block_out", default; it sees every edit at or below
`layer`), the input of that layer's MLP output projection ("key"; blind to an edit *at* `layer`,
since that edit changes the projection, not its input) or the last block's output at the
prompt's last token ("final").

- Reading A: G₀, G₁ = directed kNN cosine graphs of the unedited / current states; GED =
  |E₀ Δ E₁| / 2kN overall, and per edit target on its ego network (its k nearest probes in G₀'s
  space, edges among them, / (|E₀|+|E₁| there)), mean and max over live edits.
- Reading B: a probe's answer is P(target_true) > P(target_new); flip rates on the edit
  targets' hidden-space neighbours (top-k probes by cosine of unedited states, other subjects),
  on a seeded random sample of the other probes, and their gap, "impact".
- Outliers: dᵢ = ‖h¹ᵢ − h⁰ᵢ‖/‖h⁰ᵢ‖, flagged by z-score > z* (or top-q), listed in
  `EvalResult.info["outliers"]`. SORA flags its own, between the states before and after a
  proposed edit (`probe_states`, `change_scores`, `outliers`).

Cost: `prepare` reads h⁰ (forwards stop after `layer`), builds G₀ and reads the N unedited
answers; `evaluate` re-reads the N states and answers on the current model, plus the live edits'
states (their unedited ones are read once each, cached by prompt and subject). Reading B's
answers are most of it (`answers=False` skips them).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..data import EditRequest
from ..data import load as load_requests
from . import _gora_graph as g
from .base import AFTER_ALL, EvalContext, EvalResult, Metric, configure


@dataclass
class GoraConfig:
    """probes: a dataset name or path for `seqedit.data.load` (read with `probe_split`), or a
    list of EditRequests (or their `to_dict` forms); the first `n_probes` are used, then the
    first `mquake_probes` MQuAKE single-hop rewrites are added. Every probe needs target_true and
    target_new.
    layer: None = the deepest layer whose MLP output weight the editor edits (`ctx.weights`),
    else the middle layer. top_q (a fraction) replaces the z rule when set; a node must also
    have moved by more than min_change to be flagged. max_outliers caps the list, not the count.
    answers=False skips reading B (the 2N teacher-forced target scores, most of the cost); its
    metrics are then None with a note.
    """

    probes: Any = "counterfact"
    probe_split: str | None = "train"
    n_probes: int = 200
    mquake_probes: int = 0
    k: int = 10
    layer: int | None = None
    site: str = "block_out"
    z_threshold: float | None = 3.0
    top_q: float | None = None
    min_change: float = 1e-5
    max_outliers: int = 20
    seed: int = 0
    batch_size: int = 32
    answers: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.probes, (list, tuple)):  # probes given inline, or read back from JSON
            self.probes = [EditRequest.from_dict(p) if isinstance(p, Mapping) else p
                           for p in self.probes]
        for name, low in (("n_probes", 1), ("mquake_probes", 0), ("k", 1), ("max_outliers", 0),
                          ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"gora: {name} must be an int >= {low}, got {value!r}")
        if not isinstance(self.answers, bool):
            raise ValueError(f"gora: answers must be True or False, got {self.answers!r}")
        if self.site not in g.SITES:
            raise ValueError(f"gora: site must be one of {g.SITES}, got {self.site!r}")
        if self.layer is not None:
            if not isinstance(self.layer, int) or isinstance(self.layer, bool):
                raise ValueError(f"gora: layer must be an int or None, got {self.layer!r}")
            if self.site == "final":
                raise ValueError("gora: layer cannot be set with site='final' (it reads the "
                                 "last block)")
        if self.z_threshold is None and self.top_q is None:
            raise ValueError("gora: set z_threshold or top_q (the outlier rule)")
        if self.z_threshold is not None and not _positive(self.z_threshold):
            raise ValueError(f"gora: z_threshold must be a positive number, got "
                             f"{self.z_threshold!r}")
        if self.top_q is not None and not (_positive(self.top_q) and self.top_q <= 1):
            raise ValueError(f"gora: top_q must be a fraction in (0, 1], got {self.top_q!r}")
        if not (_positive(self.min_change) or self.min_change == 0):
            raise ValueError(f"gora: min_change must be a number >= 0, got {self.min_change!r}")


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@dataclass
class _Prepared:
    probes: list
    site: str
    layer: int
    h0: torch.Tensor
    adj0: torch.Tensor
    answers0: torch.Tensor | None  # None when reading B is off
    order: list[int]  # a seeded permutation of the probes, for reading B's random sample


NO_EDITS = "no live edits"


def _subject_key(subject: str) -> str:
    return subject.strip().casefold()


class GoraEvaluator:
    """See the module doc. `prepare` must run on the unedited model before `evaluate`."""

    name = "gora"

    def __init__(self, config: GoraConfig | None = None, **options: Any):
        """Options as keywords, or a config already built (SORA's, which extends GORA's)."""
        if config is not None and (options or not isinstance(config, GoraConfig)):
            raise TypeError("gora: pass either a GoraConfig or options, not both")
        self.config = config if config is not None else configure(GoraConfig, options, self.name)
        self._prep: _Prepared | None = None
        self._targets0: dict[tuple[str, str], torch.Tensor] = {}

    # -- preparation -------------------------------------------------------------------------

    def _load_probes(self) -> list:
        cfg = self.config
        if isinstance(cfg.probes, (list, tuple)):
            probes = list(cfg.probes)[:cfg.n_probes]
        else:
            probes = load_requests(cfg.probes, split=cfg.probe_split, limit=cfg.n_probes)
        if cfg.mquake_probes:
            probes += load_requests("mquake", limit=cfg.mquake_probes)
        bad = [i for i, p in enumerate(probes)
               if not (isinstance(p.target_true, str) and isinstance(p.target_new, str))]
        if bad:
            raise ValueError(f"gora: probes need target_true and target_new (reading B compares "
                             f"them); probes {bad[:10]} lack one")
        if len(probes) <= self.config.k:
            raise ValueError(f"gora: k={self.config.k} needs more than k probes, got "
                             f"{len(probes)} (raise n_probes or lower k)")
        return probes

    def _where(self, spec, weights) -> tuple[str, int]:
        cfg = self.config
        if cfg.site == "final":
            return cfg.site, spec.num_layers - 1
        if cfg.layer is not None:
            if not 0 <= cfg.layer < spec.num_layers:
                raise ValueError(f"gora: layer must be in 0..{spec.num_layers - 1}, got "
                                 f"{cfg.layer}")
            return cfg.site, cfg.layer
        names = set(weights)
        edited = [i for i in range(spec.num_layers) if spec.mlp_out_weight_name(i) in names]
        return cfg.site, max(edited) if edited else spec.num_layers // 2

    def _answers(self, model, tokenizer, probes) -> torch.Tensor:
        lp = g.pair_logprobs(model, tokenizer, probes, batch_size=self.config.batch_size)
        return lp[:, 0] > lp[:, 1]

    def _states(self, model, ctx: EvalContext, requests) -> torch.Tensor:
        p = self._require()
        return g.read_states(model, ctx.spec, ctx.tokenizer, requests, site=p.site,
                             layer=p.layer, batch_size=self.config.batch_size)

    def prepare(self, model: torch.nn.Module, ctx: EvalContext) -> None:
        cfg = self.config
        probes = self._load_probes()
        site, layer = self._where(ctx.spec, ctx.weights)
        h0 = g.read_states(model, ctx.spec, ctx.tokenizer, probes, site=site, layer=layer,
                           batch_size=cfg.batch_size)
        order = torch.randperm(len(probes), generator=torch.Generator().manual_seed(cfg.seed))
        answers0 = self._answers(model, ctx.tokenizer, probes) if cfg.answers else None
        self._prep = _Prepared(probes, site, layer, h0, g.knn_adjacency(h0, cfg.k), answers0,
                               order.tolist())
        self._targets0 = {}

    def _require(self) -> _Prepared:
        if self._prep is None:
            raise RuntimeError("gora: call prepare(model, ctx) on the unedited model first")
        return self._prep

    def _target_states0(self, model, ctx: EvalContext, requests) -> torch.Tensor:
        """Unedited states of the live edits' prompts, read once per (prompt, subject)."""
        keys = [(r.prompt, r.subject) for r in requests]
        missing = {k: r for k, r in zip(keys, requests) if k not in self._targets0}
        if missing:
            with ctx.unedited():
                fresh = self._states(model, ctx, list(missing.values()))
            self._targets0.update(zip(missing, fresh))
        return torch.stack([self._targets0[k] for k in keys])

    # -- measurement -------------------------------------------------------------------------

    def _metric(self, name, value, reading, *, n=None, stderr=None, note=None) -> Metric:
        p = self._require()
        protocol = {"family": "gora", "reading": reading, "site": p.site, "layer": p.layer,
                    "k": self.config.k, "nodes": len(p.probes), "experimental": True}
        return Metric(name, value, protocol, n=n, stderr=stderr, note=note)

    def _flip_metric(self, name, flips: torch.Tensor, idx: list[int], why_empty: str) -> Metric:
        if not idx:
            return self._metric(name, None, "B", n=0, note=why_empty)
        rate = float(flips[idx].double().mean())
        return self._metric(name, rate, "B", n=len(idx),
                            stderr=math.sqrt(rate * (1 - rate) / len(idx)))

    def _flagged(self, d: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        cfg = self.config
        return g.flag_outliers(d, z_threshold=cfg.z_threshold, top_q=cfg.top_q,
                               min_change=cfg.min_change)

    def _ego_metrics(self, adj1: torch.Tensor, t0: torch.Tensor | None) -> list[Metric]:
        p = self._require()
        if t0 is None:
            return [self._metric(n, None, "A", n=0, note=NO_EDITS)
                    for n in ("ged_ego", "ged_ego_max")]
        egos = [g.ego_ged(p.adj0, adj1, torch.tensor(ego))
                for ego in g.nearest(t0, p.h0, self.config.k)]
        return [self._metric("ged_ego", sum(egos) / len(egos), "A", n=len(egos)),
                self._metric("ged_ego_max", max(egos), "A", n=len(egos))]

    def _b_sets(self, requests, t0: torch.Tensor | None) -> tuple[list[int], list[int]]:
        """Reading B's probes: the live edits' hidden-space neighbours of other subjects, and a
        seeded sample of as many from the rest (neither neighbours nor an edited subject)."""
        if t0 is None:
            return [], []
        p = self._require()
        subjects = [_subject_key(q.subject) for q in p.probes]
        same = torch.tensor([[s == _subject_key(r.subject) for s in subjects] for r in requests])
        neighbours = sorted({j for row in g.nearest(t0, p.h0, self.config.k, same) for j in row})
        taken = set(neighbours) | {j for j in range(len(p.probes)) if bool(same[:, j].any())}
        return neighbours, [j for j in p.order if j not in taken][:len(neighbours)]

    def _flip_metrics(self, flips, neighbours, sample, live: bool) -> list[Metric]:
        if flips is None:
            off = "reading B is off (answers=False)"
            return [self._metric(n, None, "B", n=0, note=off)
                    for n in ("flip_all", "flip_neighbours", "flip_random", "impact")]
        fn = self._flip_metric("flip_neighbours", flips, neighbours,
                               "the live edits' subjects cover every probe" if live else NO_EDITS)
        fr = self._flip_metric("flip_random", flips, sample,
                               "no probes left outside the neighbours" if live else NO_EDITS)
        both = fn.value is not None and fr.value is not None
        return [self._flip_metric("flip_all", flips, list(range(len(flips))), ""), fn, fr,
                self._metric("impact", fn.value - fr.value if both else None, "B",
                             n=len(neighbours) + len(sample),
                             note=None if both else "needs both flip rates")]

    def _target_change(self, model, ctx, requests, t0: torch.Tensor | None) -> Metric:
        if t0 is None:
            return self._metric("target_change", None, "outlier", n=0, note=NO_EDITS)
        moved = g.change_scores(t0, self._states(model, ctx, requests))
        return self._metric("target_change", float(moved.mean()), "outlier", n=len(requests))

    def evaluate(self, model: torch.nn.Module, ctx: EvalContext) -> EvalResult:
        start = time.perf_counter()
        p, cfg = self._require(), self.config
        h1 = self.probe_states(model, ctx)
        adj1 = g.knn_adjacency(h1, cfg.k)
        d = g.change_scores(p.h0, h1)
        n_nodes = len(p.probes)
        requests = list(ctx.live_requests())
        t0 = self._target_states0(model, ctx, requests) if requests else None
        metrics = [self._metric("ged", g.edge_difference(p.adj0, adj1) / (2 * cfg.k * n_nodes),
                                "A", n=n_nodes), *self._ego_metrics(adj1, t0)]
        neighbours, sample = self._b_sets(requests, t0)
        flips = None
        if cfg.answers:
            flips = self._answers(model, ctx.tokenizer, p.probes) != p.answers0
        metrics += self._flip_metrics(flips, neighbours, sample, bool(requests))
        flagged, z = self._flagged(d)
        metrics += [self._metric("outliers", float(len(flagged)), "outlier", n=n_nodes),
                    self._metric("change_mean", float(d.mean()), "outlier", n=n_nodes),
                    self._metric("change_max", float(d.max()), "outlier", n=n_nodes),
                    self._target_change(model, ctx, requests, t0)]
        info = {"outliers": [self._outlier_entry(i, d, z) for i in flagged[:cfg.max_outliers]],
                "n_outliers": len(flagged), "neighbour_probes": neighbours,
                "random_probes": sample,
                "flipped_probes": [] if flips is None else torch.nonzero(flips)[:, 0].tolist()}
        return EvalResult(self.name, metrics, step=ctx.step, live_edits=ctx.live_edits,
                          schedule=AFTER_ALL, seconds=time.perf_counter() - start, info=info)

    def _outlier_entry(self, i: int, d: torch.Tensor, z: torch.Tensor) -> dict[str, Any]:
        p = self._require()
        q = p.probes[i]
        return {"probe": i, "case_id": q.case_id, "prompt": q.prompt, "subject": q.subject,
                "target_true": q.target_true, "score": float(d[i]), "z": float(z[i]),
                "unedited_prefers_true": None if p.answers0 is None else bool(p.answers0[i])}

    # -- what SORA reads (guards/sora.py) ---------------------------------------------------

    @property
    def probes(self) -> list[EditRequest]:
        return self._require().probes

    def probe_states(self, model: torch.nn.Module, ctx: EvalContext) -> torch.Tensor:
        """[N, d]: the probes' states on the model as it is now (SORA reads them with and
        without a proposed edit hooked in). The model is not changed."""
        return self._states(model, ctx, self._require().probes)

    @staticmethod
    def change_scores(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """d = ‖after − before‖/‖before‖ per probe (states as `probe_states` returns them)."""
        return g.change_scores(before, after)

    def outliers(self, d: torch.Tensor) -> list[int]:
        """The probes GORA's rule flags on change scores d, largest change first (all of them:
        max_outliers caps what a caller keeps)."""
        return self._flagged(d)[0]
