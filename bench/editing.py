"""Sequential editing: seqedit's editors (fast value path) vs the pure-PyTorch reference path.

    python bench/editing.py                       # SmolLM2-135M, 20 CounterFact edits, ROME and MEMIT
    python bench/editing.py --n 100 --methods rome,memit,alphaedit
    python bench/editing.py --quick               # tiny random Llama, seconds (mechanics only)
    python bench/editing.py --paired --n 10       # both paths edit by edit: fair on a busy machine
    python bench/editing.py --model gemma3-270m --n 100 --reference-n 0 --methods rome,memit,alphaedit \
        --log gemma.jsonl                          # efficacy of the defaults on the first 100 records

Each method edits the first N records of the CounterFact edit split one at a time, applying every
Delta before the next edit (sequential), twice: once with the default (fast) value optimisation
and once with `fast=False`, the reference path — a full forward per optimisation step, one
request at a time, with a hook adding δ, as existing tools do. Everything else (keys, solves,
templates) is shared, so the ratio is the ratio of the editors as a whole. Both runs start from
the same weights. Efficacy is measured right after each edit: P(target_new) > P(target_true) by
mean per-token NLL on the filled prompt (teacher forcing), the session's own probe
(`seqedit.session.probe`); every Delta is applied with the session's fused update. Seconds per edit count `compute` only
(not the evaluation); process CPU seconds are given too — on a shared machine they are the
steadier number. Key statistics come from `seqedit.stats.second_moments` (small token budget,
cached on disk).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from seqedit import data, editors
from seqedit.editors import EditContext
from seqedit.editors import keys as editor_keys
from seqedit.models import load, spec as model_spec, tiny
from seqedit.session.checks import apply_delta
from seqedit.session.probe import request_probabilities, success
from seqedit.stats import second_moments


class Runner:
    """One editing path (ours or the reference) on its own model: `step(request)` edits, applies,
    commits and measures; `results` collects per-edit lists."""

    def __init__(self, model, tokenizer, spec, method, second_moment, fast: bool, overrides: dict):
        _, config_cls = editors.EDITORS[method]
        overrides = {k: v for k, v in overrides.items() if k in config_cls.__dataclass_fields__}
        if "fast" in config_cls.__dataclass_fields__:
            overrides = {**overrides, "fast": fast}
        self.model, self.tokenizer, self.method, self.fast = model, tokenizer, method, fast
        self.editor = editors.create(method, spec, **overrides)
        self.ctx = EditContext(tokenizer, spec, second_moment=second_moment, seed=0)
        cfg = self.editor.config
        if hasattr(cfg, "context_template_starts"):  # generated once per session: untimed
            editor_keys.context_templates(model, tokenizer, self.ctx, starts=cfg.context_template_starts,
                                          length=cfg.context_template_length)
        self.results = {"wall": [], "cpu": [], "eff": [], "steps": []}

    def step(self, request) -> dict:
        t0, c0 = time.perf_counter(), time.process_time()
        delta = self.editor.compute(self.model, [request], self.ctx)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not delta.is_finite():
            raise RuntimeError(f"{self.method}: non-finite delta ({delta.non_finite_reason()})")
        apply_delta(self.model, delta, 1.0)
        self.editor.commit(delta)
        probs = request_probabilities(self.model, self.tokenizer, [request])[0]
        eff = float(success(request, probs))
        s = delta.info.get("steps", 0)  # per request for value-optimising editors, one number for FT
        steps = sum(s) if isinstance(s, list) else s
        for key, value in (("wall", wall), ("cpu", cpu), ("eff", eff), ("steps", steps)):
            self.results[key].append(value)
        return {"method": self.method, "path": "ours" if self.fast else "reference",
                "i": len(self.results["eff"]) - 1, "case_id": request.case_id, "wall": wall, "cpu": cpu,
                "efficacy": eff, "steps": steps, "p_new": probs["new"], "p_true": probs["true"],
                **{k: delta.info[k] for k in ("p_last", "target_gap", "targets") if k in delta.info}}


def has_reference(method) -> bool:
    """FT optimises no target value, so it has no reference path."""
    return "fast" in editors.EDITORS[method][1].__dataclass_fields__


def run(model, tokenizer, spec, method, requests, second_moment, fast: bool, overrides: dict, log=None):
    """One path, every request in turn (sequential: each edit applied before the next)."""
    if not fast and not has_reference(method):
        return None
    runner = Runner(model, tokenizer, spec, method, second_moment, fast, overrides)
    for request in requests:
        record = runner.step(request)
        if log is not None:
            log(record)
    return runner.results


def run_paired(models, tokenizer, spec, method, requests, second_moment, overrides: dict, log=None):
    """Both paths, each on its own model copy, alternating edit by edit (ours first on even edits),
    so both see the same machine load: the fair ratio on a shared machine."""
    runners = [Runner(m, tokenizer, spec, method, second_moment, fast, overrides)
               for m, fast in zip(models, (True, False))]
    for i, request in enumerate(requests):
        for runner in (runners if i % 2 == 0 else runners[::-1]):
            record = runner.step(request)
            if log is not None:
                log(record)
    return {True: runners[0].results, False: runners[1].results}


def mean(xs) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="sequential edits per method on our path")
    ap.add_argument("--reference-n", type=int, default=None,
                    help="sequential edits on the reference path (default: --n; 0 skips it); the "
                         "speed-up compares the first min(n, reference-n) edits of both")
    ap.add_argument("--methods", default="rome,memit", help="comma-separated editor names")
    ap.add_argument("--model", default="smollm2-135m", help="a packaged model name (see seqedit.models.load)")
    ap.add_argument("--quick", action="store_true", help="tiny random Llama instead of a packaged model")
    ap.add_argument("--stats-tokens", type=int, default=20000, help="token budget of the key statistics")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--paired", action="store_true",
                    help="run both paths edit by edit, alternating, each on its own model copy (--n edits)")
    ap.add_argument("--log", default=None, help="append one JSON line per edit to this file")
    ap.add_argument("--from-log", default=None, help="only print the table of an earlier --log file")
    args = ap.parse_args(argv)
    if args.from_log:
        table_from_log(args.from_log)
        return
    ref_n = args.n if args.reference_n is None else args.reference_n
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        model, tokenizer = tiny("llama", num_layers=6)
        overrides = {"v_num_grad_steps": 10}
        name = "tiny-llama"
    else:
        model, tokenizer = load(args.model)
        overrides = {}
        name = args.model
    spec = model_spec(model)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    layers = sorted({*spec.default_edit_layers(), spec.default_rome_layer()})
    stats = second_moments(model, tokenizer, layers, max_tokens=args.stats_tokens, progress=False)
    c = {layer: mom for layer, (mom, _) in stats.items()}
    requests = data.load("counterfact", limit=max(args.n, ref_n))
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def log(record):
        line = json.dumps({"model": name, **record})
        print(line, flush=True)
        if args.log:
            with open(args.log, "a") as f:
                f.write(line + "\n")

    rows = []
    for method in methods:
        res = {}
        if args.paired and has_reference(method):
            model.load_state_dict(original)
            copies = (model, copy.deepcopy(model))
            res = run_paired(copies, tokenizer, spec, method, requests[:args.n], c.__getitem__, overrides, log)
            del copies
        else:
            for fast, n in ((True, args.n), (False, ref_n)):
                model.load_state_dict(original)
                res[fast] = run(model, tokenizer, spec, method, requests[:n], c.__getitem__, fast, overrides, log) if n else None
        rows.append((method, res))
    model.load_state_dict(original)

    print_table(rows, name, torch.get_num_threads())


def print_table(rows, name: str, threads) -> None:
    """rows: [(method, {True: ours, False: reference})], each a dict of per-edit lists or None.
    s/edit and the speed-up cover the first k edits, k = the shorter of the two runs."""
    print(f"\nSequential editing, {name}, CPU ({threads} threads), first CounterFact edit records; "
          "s/edit and speed-up over the first k edits of both paths")
    print(f"{'method':<10} {'path':<10} {'edits':>6} {'k':>4} {'s/edit':>8} {'cpu-s/edit':>11} "
          f"{'efficacy':>9} {'eff@k':>6} {'steps':>6} {'speedup':>8}")
    for method, res in rows:
        ours, ref = res.get(True), res.get(False)
        k = min(len(ours["eff"]), len(ref["eff"])) if ours and ref else None
        for fast, r in ((True, ours), (False, ref)):
            if not r:
                continue
            head = slice(0, k)
            speed = f"{mean(ref['wall'][:k]) / mean(r['wall'][:k]):.2f}x" if k else "-"
            print(f"{method:<10} {'ours' if fast else 'reference':<10} {len(r['eff']):>6} {k or '-':>4} "
                  f"{mean(r['wall'][head]):>8.2f} {mean(r['cpu'][head]):>11.2f} {mean(r['eff']):>9.3f} "
                  f"{mean(r['eff'][head]):>6.3f} {mean(r['steps']):>6.1f} {speed:>8}")


def table_from_log(path: str) -> None:
    """Print the table of a --log file (also of a run that was stopped part-way)."""
    runs: dict = {}
    for line in open(path, encoding="utf-8"):
        rec = json.loads(line)
        key = (rec["model"], rec["method"])
        r = runs.setdefault(key, {}).setdefault(rec["path"] == "ours", {"wall": [], "cpu": [], "eff": [], "steps": []})
        for field, name in (("wall", "wall"), ("cpu", "cpu"), ("eff", "efficacy"), ("steps", "steps")):
            r[field].append(rec[name])
    for model in dict.fromkeys(m for m, _ in runs):
        print_table([(method, res) for (m, method), res in runs.items() if m == model], model, 1)


if __name__ == "__main__":
    main()
