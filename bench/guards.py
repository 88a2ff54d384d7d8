"""Evidence for the guards: long sequential runs of each method, resumable across days.

    python bench/guards.py run --configs memit,memit+d4s            # start or continue (batch10)
    python bench/guards.py run --protocol single --configs memit,memit+d4s,memit+prune-posthoc
    python bench/guards.py run --model gemma3-270m --protocol single --configs memit,memit+d4s
    python bench/guards.py table                                    # table + PNG curves, all runs

Protocols: "batch10" — the first 1,000 CounterFact edit records as 100 sequential steps of 10;
"single" — the first 300, one per step. Each config runs as an EditSession in its own
directory under --runs (default /work/runs/guards/<model>-<protocol>/<config>); calling `run`
again resumes it from its ledger (no edit lost or repeated) and goes on, so a run can be
stopped at any point. Post-hoc PRUNE changes only what the evaluators see, so
"memit+prune-posthoc" does not recompute MEMIT: it replays the memit run's recorded deltas
(`RecordedMemit`, checked step by step) as far as that run has gone. PRUNE after every edit
leaves the weights bit-identical to MEMIT's until a singular value of ΔW reaches σ_max(W₀), so
"memit+prune-every" replays them too while its weights still equal the memit run's, and
computes MEMIT itself from the first step where they differ (or that the memit run has not
made).

Evaluators, every 100 edits (and at 0; "memit-early": every 20): editing metrics (efficacy
right after each edit from the session's probe, P(new) > P(true) on the rewrite prompt;
retention of a seeded sample of at most 200 live edits after all, binary, token-level and
generation-based; generalisation; specificity), weight health (mean |W|, σ_max(ΔW)/σ_max(W₀),
condition number; after each step too) and the quick general probe (WikiText-2 perplexity over
4 articles, SST-2, CommonsenseQA-cloze; 200 documents each).
Seconds per edit are the session's compute + guard + write + apply + commit time per request
(probes and evaluations excluded).

`table` reads every run's ledger (read-only, safe while a run is writing) and writes seqedit's
report of each group into bench/results/guards/<model>-<protocol>/: report.md (one row per config
and checkpoint, with how each number was measured), report.html, report.json and PNG curves
against the number of edits; for a SORA run also <config>-records.md, what SORA did per 100
edits (re-solves, outliers, GORA change scores of proposal and re-solve) from its ledger records.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from seqedit import data, editors, metrics, models
from seqedit.editors import Delta, SolveError
from seqedit.editors.memit import MemitEditor
from seqedit.models import spec as model_spec
from seqedit.session import EditSession
from seqedit.session.ledger import MANIFEST, read_delta, read_manifest
from seqedit.session.reader import read_run

PROTOCOLS = {"batch10": {"n": 1000, "batch": 10}, "single": {"n": 300, "batch": 1}}
EVAL_EVERY_EDITS = 100
NAS_REQUESTS = 200
# config name → (method, guards, editor options)
CONFIGS = {
    "memit": ("memit", [], {}),
    # Both PRUNE modes start from the memit run's recorded deltas (RecordedMemit): post-hoc only
    # changes what the evaluators see, so it replays and goes only as far as that run has gone;
    # "every" replays while its weights equal that run's and computes from where they differ.
    "memit+prune-every": ("memit", [{"name": "prune", "mode": "every", "every": 1}],
                          {"recorded": "memit"}),
    "memit+prune-posthoc": ("memit", [{"name": "prune", "mode": "posthoc"}],
                            {"recorded": "memit", "as_far_as_recorded": True}),
    "memit+d4s": ("memit", ["d4s"], {}),
    # The released driver's residual split pushes 2.28x the residual over five layers; this one
    # measures what each layer still lacks (seqedit's flag), to tell the algorithm from the split.
    "memit+d4s-recompute": ("memit", [{"name": "d4s", "recompute_residual": True}], {}),
    "memit+sora": ("memit", ["sora"], {}),
    "memit+nas": ("memit", [], {"nas_anchor": "measured"}),
    "alphaedit": ("alphaedit", [], {}),
    "alphaedit+nas": ("alphaedit", [], {"nas_anchor": "measured"}),
    # The original code's null-space rule (eigenvalues below an absolute 2e-2) against seqedit's
    # default (below 1e-2·λ_max): the perplexity question of bench/alphaedit_nullspace.py.
    "alphaedit-absolute": ("alphaedit", [], {"nullspace_relative": False, "nullspace_threshold": 2e-2}),
    # NAS on the AlphaEdit measured at batch 10 (the original rule), so the two differ by NAS only.
    "alphaedit-absolute+nas": ("alphaedit", [], {"nullspace_relative": False,
                                                 "nullspace_threshold": 2e-2,
                                                 "nas_anchor": "measured"}),
    "encore": ("encore", [], {}),
    # Blocks that normalise the MLP output (Gemma-3): targets rescaled to the replaced output's
    # norm, which such a block cannot tell apart from MEMIT's (editors/norm.py).
    "memit+keep-norm": ("memit", [], {"keep_target_norm": True}),
    # How early the damage starts: the memit run's deltas replayed (run with --edits 100),
    # evaluated every 20 edits instead of every 100.
    "memit-early": ("memit", [], {"recorded": "memit", "as_far_as_recorded": True,
                                  "eval_every_edits": 20}),
}
# options of this script, not of the session
RUN_OPTIONS = ("recorded", "as_far_as_recorded", "eval_every_edits")
RESULTS = Path(__file__).resolve().parent / "results" / "guards"


def evaluators():
    # Efficacy right after each edit is the session's own probe (in every edit line); the editing
    # evaluator measures at the checkpoints only.
    return [metrics.create("editing", after_each=False, retention=200, fluency_prompts=20),
            metrics.create("health"),
            metrics.create("general")]


def nas_anchor(model_name: str, model, tok) -> tuple[float, ...]:
    """NAS's reference norm, measured once per model as the paper's code does (MEMIT's value
    settings, bare prompts, mean ‖v₀ + δ‖ with the top 5% dropped) on NAS_REQUESTS seeded
    random CounterFact train records (the paper: 1,000), on the unedited model. Kept beside the
    results (committed: ≈ 17 CPU-minutes to measure on SmolLM2, and run folders do not outlive
    the machine)."""
    from seqedit.editors import EditContext
    from seqedit.editors.norm import measure_anchor

    path = RESULTS / f"{model_name}-nas-anchor.json"
    if path.exists():
        return tuple(json.loads(path.read_text())["anchor"])
    spec = model_spec(model)
    records = data.load("counterfact", split="train")
    pick = torch.randperm(len(records), generator=torch.Generator().manual_seed(0))[:NAS_REQUESTS]
    cfg = editors.create("memit", spec).config
    anchor = measure_anchor(model, [records[i] for i in pick.tolist()],
                            EditContext(tok, spec), cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"anchor": anchor, "requests": NAS_REQUESTS,
                                "split": "counterfact train", "seed": 0}) + "\n")
    return anchor


class RecordedMemit(MemitEditor):
    """MEMIT that returns the delta another MEMIT run (`source`, same protocol) recorded for the
    same requests (or its refusal) while the model it edits is still that run's model: Σ|W| of
    every edited weight must equal what the source recorded after its previous step (rel 1e-9).
    Where it differs (a guard changed the weights) or the source has not made the step, it
    computes MEMIT itself, and from then on always (after a resume: from the first step it
    checks). The first step is computed too and must match the recorded ΔW (rel 1e-4), so a
    replay never starts from a different editor."""

    name = "memit-recorded"

    def __init__(self, config, source: Path):
        super().__init__(config)
        self.source = Path(source)
        self._steps = read_run(self.source).edits  # read again only when a step is not there
        self._compute_reason: str | None = None

    def _find(self, ids: list):
        """(the source's record of this step, its last applied record before it), or None."""
        for fresh in (False, True):
            if fresh:
                self._steps = read_run(self.source).edits
            for j, rec in enumerate(self._steps):
                if [q["case_id"] for q in rec["requests"]] == ids:
                    applied = [r for r in self._steps[:j] if r.get("status") == "applied"]
                    return rec, applied[-1] if applied else None
        return None

    def _same_weights(self, model, before) -> bool:
        params = dict(model.named_parameters())
        for name, stats in (before or {}).get("layer_stats", {}).items():
            have = params[name].detach().double().abs().sum().item()
            if abs(have - stats["abs_sum_w"]) > 1e-9 * stats["abs_sum_w"]:
                return False
        return True

    def compute(self, model, requests, ctx) -> Delta:
        if self._compute_reason is None:
            found = self._find([r.case_id for r in requests])
            if found is None or not self._same_weights(model, found[1]):
                # from here on the weights are never the source's again
                self._compute_reason = "weights differ from" if found else "step not made by"
        if self._compute_reason is not None:
            delta = super().compute(model, requests, ctx)
            delta.info["recorded_from"] = f"computed: {self._compute_reason} {self.source.name}"
            return delta
        rec, before = found
        if rec.get("status") != "applied":  # refused there on the same weights, so refused here
            raise SolveError(f"{self.source.name} refused this step: {rec.get('reason')}")
        delta = read_delta(self.source, rec["delta"], self.name)
        delta.info = {**rec["info"], "recorded_from": f"{self.source.name} edit {rec['edit_id']}"}
        if before is None:
            fresh = super().compute(model, requests, ctx)
            worst = max(float((a.dense() - b.dense()).norm() / b.dense().norm())
                        for a, b in zip(fresh.layers, delta.layers, strict=True))
            if worst > 1e-4:
                raise RuntimeError(f"the first step recomputed differs from {self.source}'s by "
                                   f"{worst:.2e} (relative Frobenius): the runs would diverge")
            delta.info["recomputed_rel_diff"] = worst
        return delta


def open_session(directory: Path, model_name: str, model, tok, config: str, batch: int) -> EditSession:
    method, guards, options = CONFIGS[config]
    every = max(1, options.get("eval_every_edits", EVAL_EVERY_EDITS) // batch)
    if "recorded" in options:
        method = RecordedMemit(editors.create("memit", model_spec(model)).config,
                               directory.parent / options["recorded"])
    options = {k: v for k, v in options.items() if k not in RUN_OPTIONS}
    if (directory / MANIFEST).exists():
        print(f"resuming {directory}", flush=True)
        return EditSession.resume(directory, model, tok, evaluators=evaluators(), eval_every=every,
                                  method=None if isinstance(method, str) else method)
    if options.get("nas_anchor") == "measured":
        options = {**options, "nas_anchor": nas_anchor(model_name, model, tok)}
    directory.parent.mkdir(parents=True, exist_ok=True)
    return EditSession(model, tok, method, ledger_dir=directory, guards=guards,
                       evaluators=evaluators(), eval_every=every, **options)


def run(args) -> None:
    proto = PROTOCOLS[args.protocol]
    requests = data.load("counterfact", limit=min(proto["n"], args.edits or proto["n"]))
    for config in args.configs.split(","):
        if config not in CONFIGS:
            sys.exit(f"unknown config {config!r}; known: {', '.join(CONFIGS)}")
        directory = Path(args.runs) / f"{args.model}-{args.protocol}" / config
        model, tok = models.load(args.model)
        start = time.perf_counter()
        mine, options = requests, CONFIGS[config][2]
        if options.get("as_far_as_recorded"):
            source = options["recorded"]
            done = read_run(directory.parent / source).edits
            mine = requests[:sum(len(r["requests"]) for r in done)]
            print(f"{config}: replays {source}, which has made {len(mine)} edits", flush=True)
        with open_session(directory, args.model, model, tok, config, proto["batch"]) as session:
            todo = session.pending(mine)
            print(f"{config}: {len(mine) - len(todo)} done, {len(todo)} to go", flush=True)
            session.edit(mine, batch_size=proto["batch"], progress=True)
        print(f"{config}: finished in {time.perf_counter() - start:.0f} s", flush=True)
        del model


# -- reading the runs --------------------------------------------------------------------------
def merged(fresh: list[dict], earlier: list[dict]) -> tuple[list[dict], list[str]]:
    """The runs to report per config: the one that has made more edits of the run read now from
    its ledger and the one in the group's committed report.json (run folders do not outlive the
    machine; the report does). Returns them sorted by label, and the labels taken from before."""
    done = {s["label"]: s for s in fresh}
    carried = []
    for old in earlier:
        now = done.get(old["label"])
        if now is None or now["edits"]["requests_applied"] < old["edits"]["requests_applied"]:
            done[old["label"]] = old
            carried.append(old["label"])
    return [done[k] for k in sorted(done)], sorted(carried)


SORA_FIELDS = ("change_mean_proposed", "change_mean_sora", "outlier_change_proposed",
               "outlier_change_sora")


def sora_records(directory: Path, window: int = EVAL_EVERY_EDITS) -> str:
    """What SORA did, from its ledger records, per `window` edit requests: how often it
    re-solved, how many probes it flagged and kept, and GORA's change scores of the proposal
    and of the re-solve (mean over the probes; mean over the outliers)."""
    rows, done = {}, 0
    for rec in read_run(directory).edits:
        if rec.get("status") != "applied":
            continue
        done += len(rec["requests"])
        s = rec["info"]["guards"]["sora"]
        row = rows.setdefault((done - 1) // window, {"steps": 0, "re_solved": 0, "flagged": 0,
                                                     "kept": 0, **{f: [] for f in SORA_FIELDS}})
        row["steps"] += 1
        row["re_solved"] += s["re_solved"]
        row["flagged"] += s["n_flagged"]
        row["kept"] += len(s["outliers"])
        for f in SORA_FIELDS:
            if f in s:
                row[f].append(s[f])

    def mean(xs):
        return f"{sum(xs) / len(xs):.4f}" if xs else "–"

    lines = [f"# SORA's records: {directory.name} (bench/guards.py; `info.guards.sora` of each "
             "applied step)", "",
             "GORA change scores d = ‖h⁺ − h‖/‖h‖ of the 200 probes at the deepest edited layer, "
             "between the model before a step and with the proposal (MEMIT's) or SORA's "
             "re-solve added; 'outliers' = the probes SORA re-solved with (at most "
             "max_outliers). Means over the steps of each window; the outlier means over the "
             "steps that re-solved.", "",
             "| edits | steps | re-solved | flagged per step | kept per step | d mean: proposal "
             "| d mean: SORA | d outliers: proposal | d outliers: SORA |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w, r in sorted(rows.items()):
        lines.append(f"| {w * window + 1}–{(w + 1) * window} | {r['steps']} | {r['re_solved']} | "
                     f"{r['flagged'] / r['steps']:.1f} | {r['kept'] / r['steps']:.1f} | "
                     + " | ".join(mean(r[f]) for f in SORA_FIELDS) + " |")
    return "\n".join(lines) + "\n"


def table(args) -> None:
    """seqedit's own report over each group of runs (read-only, safe while they are written),
    keeping the configs that the group's earlier report went further with."""
    from seqedit import report

    for group in sorted(p for p in Path(args.runs).iterdir() if p.is_dir()):
        dirs = [d for d in sorted(group.iterdir()) if (d / MANIFEST).exists()]
        if not dirs:
            continue
        out = RESULTS / group.name
        before = out / "report.json"
        earlier = json.loads(before.read_text(encoding="utf-8"))["runs"] if before.exists() else []
        runs, carried = merged([report.summarise(d, d.name) for d in dirs], earlier)
        note = (f"Carried from the earlier report (ledgers not on this machine): "
                f"{', '.join(carried)}." if carried else "")
        replayed = [r["label"] for r in runs if r["manifest"].get("method") == RecordedMemit.name]
        if replayed:
            note += (f" The s/edit of {', '.join(replayed)} is mostly the cost of replaying the "
                     "memit run's recorded deltas, not of computing them.")
        paths = report.write_summaries(runs, out, note=note.strip(),
                                       title=f"seqedit guards evidence: {group.name} "
                                             "(bench/guards.py; protocol in its docstring)")
        print(paths["markdown"].read_text(encoding="utf-8"))
        for d in dirs:
            if any(g.get("name") == "sora" for g in read_manifest(d).get("guards") or []):
                (out / f"{d.name}-records.md").write_text(sora_records(d), encoding="utf-8")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument("--protocol", default="batch10", choices=sorted(PROTOCOLS))
    r.add_argument("--configs", default="memit,memit+d4s")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--edits", type=int, help="stop after this many (default: the protocol's)")
    for p in (r, sub.add_parser("table")):
        p.add_argument("--runs", default="/work/runs/guards")
    args = ap.parse_args(argv)
    if args.command == "run":
        torch.set_num_threads(args.threads)
        run(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
