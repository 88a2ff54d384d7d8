"""Sequential editing: seqedit's editors (fast value path) vs the pure-PyTorch reference path.

    python bench/editing.py                       # SmolLM2-135M, 20 CounterFact edits, ROME and MEMIT
    python bench/editing.py --n 100 --methods rome,memit,alphaedit
    python bench/editing.py --quick               # tiny random Llama, seconds (mechanics only)
    python bench/editing.py --paired --n 10       # both paths edit by edit: fair on a busy machine
    python bench/editing.py --paired --stop       # + ours with the opt-in early stop (target leads by 1 nat)
    python bench/editing.py --model gemma3-270m --n 100 --reference-n 0 --methods rome,memit,alphaedit \
        --log gemma.jsonl                          # efficacy of the defaults on the first 100 records
    python bench/editing.py --sessions memit,memit+d4s --n 64   # whole EditSessions, guards included

With `--sessions`, each entry (an editor name, `+guard` for each guard) runs as an EditSession on
its own copy of the model, one request per step, the runs taking turns in chunks of `--chunk`
requests (one `edit()` call each), so machine load hits all alike. s/edit is the wall time of
the edit() calls over the edits (the session's own probes included, the same for every entry);
efficacy is the session's probe right after each edit. D4S optimises the targets of a chunk's
requests in batches ahead (its `target_batch`), which is where its time goes.

Each method edits the first N records of the CounterFact edit split one at a time, applying every
Delta before the next edit (sequential), twice: once with the default (fast) value optimisation
and once with `fast=False`, the reference path — a full forward per optimisation step, one
request at a time, with a hook adding δ, as existing tools do. Everything else (keys, solves,
templates) is shared, so the ratio is the ratio of the editors as a whole. With `--stop` a third
path runs ours with `early_stop_on_argmax=True` (off by default: it stops each optimisation once
the target beats every other token by more than `--margin` nats everywhere, so it computes fewer
steps than the reference and its efficacy is measured, not assumed). All runs start from the
same weights. Efficacy is measured right after each edit: P(target_new) > P(target_true) by mean
per-token NLL on the filled prompt (teacher forcing), the session's own probe
(`seqedit.metrics.probe`); every Delta is applied with the session's fused update. Seconds per
edit count `compute` only (not the evaluation); process CPU seconds are given too — on a shared
machine they are the steadier number. Key statistics come from `seqedit.stats.second_moments` (small token budget,
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
from seqedit.metrics.probe import request_probabilities, success
from seqedit.stats import second_moments


# The editing paths a run can compare: the config fields each one sets on top of the defaults.
PATHS = {
    "ours": {"fast": True},
    "ours+stop": {"fast": True, "early_stop_on_argmax": True},  # opt-in: stop once the target leads (--margin)
    "reference": {"fast": False},
}


class Runner:
    """One editing path (a PATHS name) on its own model: `step(request)` edits, applies, commits
    and measures; `results` collects per-edit lists."""

    def __init__(self, model, tokenizer, spec, method, second_moment, path: str, overrides: dict):
        _, config_cls = editors.EDITORS[method]
        fields = config_cls.__dataclass_fields__
        overrides = {k: v for k, v in {**overrides, **PATHS[path]}.items() if k in fields}
        self.model, self.tokenizer, self.method, self.path = model, tokenizer, method, path
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
        return {"method": self.method, "path": self.path,
                "i": len(self.results["eff"]) - 1, "case_id": request.case_id, "wall": wall, "cpu": cpu,
                "efficacy": eff, "steps": steps, "p_new": probs["new"], "p_true": probs["true"],
                **{k: delta.info[k] for k in ("p_last", "target_gap", "targets") if k in delta.info}}


def has_path(method, path) -> bool:
    """FT optimises no target value, so it has only the plain path."""
    return path == "ours" or all(k in editors.EDITORS[method][1].__dataclass_fields__ for k in PATHS[path])


def run(model, tokenizer, spec, method, requests, second_moment, path: str, overrides: dict, log=None):
    """One path, every request in turn (sequential: each edit applied before the next)."""
    if not has_path(method, path):
        return None
    runner = Runner(model, tokenizer, spec, method, second_moment, path, overrides)
    for request in requests:
        record = runner.step(request)
        if log is not None:
            log(record)
    return runner.results


def run_paired(models, tokenizer, spec, method, requests, second_moment, paths, overrides: dict, log=None):
    """Several paths, each on its own model copy, edit by edit in rotating order, so all see the
    same machine load: the fair ratio on a shared machine."""
    runners = [Runner(m, tokenizer, spec, method, second_moment, path, overrides) for m, path in zip(models, paths)]
    for i, request in enumerate(requests):
        for runner in runners[i % len(runners):] + runners[:i % len(runners)]:
            record = runner.step(request)
            if log is not None:
                log(record)
    return {r.path: r.results for r in runners}


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
                    help="run the paths edit by edit, in rotating order, each on its own model copy (--n edits)")
    ap.add_argument("--stop", action="store_true",
                    help="also run ours with early_stop_on_argmax (opt-in; computes fewer steps, so efficacy may differ)")
    ap.add_argument("--margin", type=float, default=1.0,
                    help="argmax_margin of the --stop path: nats by which the target must beat every other "
                         "token (default 1; 0 is a bare argmax)")
    ap.add_argument("--log", default=None, help="append one JSON line per edit to this file")
    ap.add_argument("--from-log", default=None, help="only print the table of an earlier --log file")
    ap.add_argument("--sessions", default=None,
                    help="compare whole EditSessions instead: comma-separated editor[+guard...] entries")
    ap.add_argument("--chunk", type=int, default=16, help="requests per edit() call with --sessions")
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
    overrides["argmax_margin"] = args.margin  # read only where early_stop_on_argmax is on
    spec = model_spec(model)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    layers = sorted({*spec.default_edit_layers(), spec.default_rome_layer()})
    stats = second_moments(model, tokenizer, layers, max_tokens=args.stats_tokens, progress=False)
    c = {layer: mom for layer, (mom, _) in stats.items()}
    requests = data.load("counterfact", limit=max(args.n, ref_n))
    if args.sessions:
        run_sessions(model, tokenizer, stats, requests[:args.n], args.sessions.split(","),
                     args.chunk, overrides, name)
        return
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def log(record):
        line = json.dumps({"model": name, **record})
        print(line, flush=True)
        if args.log:
            with open(args.log, "a") as f:
                f.write(line + "\n")

    paths = ["ours", *(["ours+stop"] if args.stop else []), "reference"]
    rows = []
    for method in methods:
        todo = [p for p in paths if has_path(method, p)]
        if args.paired and len(todo) > 1:
            model.load_state_dict(original)
            copies = [model] + [copy.deepcopy(model) for _ in todo[1:]]
            res = run_paired(copies, tokenizer, spec, method, requests[:args.n], c.__getitem__, todo, overrides, log)
            del copies
        else:
            res = {}
            for path in todo:
                n = ref_n if path == "reference" else args.n
                model.load_state_dict(original)
                res[path] = run(model, tokenizer, spec, method, requests[:n], c.__getitem__, path, overrides, log) if n else None
        rows.append((method, res))
    model.load_state_dict(original)

    print_table(rows, name, torch.get_num_threads())


def run_sessions(model, tokenizer, stats, requests, entries, chunk: int, overrides: dict,
                 name: str) -> None:
    """Each entry as an EditSession on its own model copy, taking turns chunk by chunk."""
    import tempfile

    from seqedit import EditSession

    overrides = {k: v for k, v in overrides.items() if k != "argmax_margin"}
    tmp = tempfile.TemporaryDirectory(prefix="bench-sessions-")
    runs = {}
    for i, entry in enumerate(entries):
        method, *guards = entry.strip().split("+")
        copy_ = model if i == len(entries) - 1 else copy.deepcopy(model)
        runs[entry] = {"session": EditSession(copy_, tokenizer, method, stats=stats,
                                              ledger_dir=f"{tmp.name}/{i}", guards=guards,
                                              **overrides),
                       "wall": 0.0, "cpu": 0.0, "eff": []}
    for start in range(0, len(requests), chunk):
        part = requests[start:start + chunk]
        for entry, r in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            results = r["session"].edit(part, progress=False)
            r["wall"] += time.perf_counter() - wall
            r["cpu"] += time.process_time() - cpu
            r["eff"] += [bool(x.success) for x in results]
            print(json.dumps({"model": name, "entry": entry, "edits": len(r["eff"]),
                              "s_per_edit": r["wall"] / len(r["eff"]),
                              "efficacy": mean(r["eff"])}), flush=True)
    base = runs[entries[0].strip()]
    print(f"\nEditSessions, {name}, CPU ({torch.get_num_threads()} threads), first {len(requests)} "
          f"CounterFact edit records, one request per step, turns of {chunk}")
    print(f"{'entry':<22} {'edits':>6} {'s/edit':>8} {'cpu-s/edit':>11} {'efficacy':>9} {'speedup':>8}")
    for entry, r in runs.items():
        n = len(r["eff"])
        print(f"{entry:<22} {n:>6} {r['wall'] / n:>8.2f} {r['cpu'] / n:>11.2f} {mean(r['eff']):>9.3f} "
              f"{base['wall'] / r['wall']:>7.2f}x")
        r["session"].close()
    tmp.cleanup()


def print_table(rows, name: str, threads) -> None:
    """rows: [(method, {path: per-edit lists or None})]. s/edit and the speed-up over the
    reference cover the first k edits, k = the shorter of that path's and the reference's runs."""
    print(f"\nSequential editing, {name}, CPU ({threads} threads), first CounterFact edit records; "
          "s/edit and speed-up over the first k edits of the path and the reference")
    print(f"{'method':<10} {'path':<10} {'edits':>6} {'k':>4} {'s/edit':>8} {'cpu-s/edit':>11} "
          f"{'efficacy':>9} {'eff@k':>6} {'steps':>6} {'speedup':>8}")
    for method, res in rows:
        ref = res.get("reference")
        for path, r in res.items():
            if not r:
                continue
            k = min(len(r["eff"]), len(ref["eff"])) if ref and path != "reference" else None
            head = slice(0, k)
            speed = f"{mean(ref['wall'][:k]) / mean(r['wall'][:k]):.2f}x" if k else "-"
            print(f"{method:<10} {path:<10} {len(r['eff']):>6} {k or '-':>4} "
                  f"{mean(r['wall'][head]):>8.2f} {mean(r['cpu'][head]):>11.2f} {mean(r['eff']):>9.3f} "
                  f"{mean(r['eff'][head]):>6.3f} {mean(r['steps']):>6.1f} {speed:>8}")


def table_from_log(path: str) -> None:
    """Print the table of a --log file (also of a run that was stopped part-way)."""
    runs: dict = {}
    for line in open(path, encoding="utf-8"):
        rec = json.loads(line)
        key = (rec["model"], rec["method"])
        r = runs.setdefault(key, {}).setdefault(rec["path"], {"wall": [], "cpu": [], "eff": [], "steps": []})
        for field, name in (("wall", "wall"), ("cpu", "cpu"), ("eff", "efficacy"), ("steps", "steps")):
            r[field].append(rec[name])
    for model in dict.fromkeys(m for m, _ in runs):
        print_table([(method, res) for (m, method), res in runs.items() if m == model], model, 1)


if __name__ == "__main__":
    main()
