"""Sequential editing: seqedit's editors (fast value path) vs the pure-PyTorch reference path.

    python bench/editing.py                       # SmolLM2-135M, 20 CounterFact edits, ROME and MEMIT
    python bench/editing.py --n 100 --methods rome,memit,alphaedit
    python bench/editing.py --quick               # tiny random Llama, seconds (mechanics only)

Each method edits the first N records of the CounterFact edit split one at a time, applying every
Delta before the next edit (sequential), twice: once with the default (fast) value optimisation
and once with `fast=False`, the reference path — a full forward per optimisation step, one
request at a time, with a hook adding δ, as existing tools do. Everything else (keys, solves,
templates) is shared, so the ratio is the ratio of the editors as a whole. Both runs start from
the same weights. Efficacy is measured right after each edit: P(target_new) > P(target_true) by
mean per-token NLL on the filled prompt (teacher forcing). Seconds per edit count `compute` only
(not the evaluation); process CPU seconds are given too — on a shared machine they are the
steadier number. Key statistics come from `seqedit.stats.second_moments` (small token budget,
cached on disk).
"""
from __future__ import annotations

import argparse
import time

import torch

from seqedit import data, editors, ops
from seqedit.editors import EditContext, _text
from seqedit.editors import keys as editor_keys
from seqedit.models import load, spec as model_spec, tiny
from seqedit.stats import second_moments


@torch.no_grad()
def efficacy(model, tokenizer, request) -> float:
    """1.0 if the mean per-token NLL of target_new is below that of target_true."""
    nll = []
    for target in (request.target_new, request.target_true):
        t_ids = _text.target_ids(tokenizer, target)
        (row,) = _text.encode_rows(tokenizer, [_text.fill("{}", request.prompt, request.subject)], [t_ids])
        logits = model(input_ids=torch.tensor([row.ids]), use_cache=False).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        nll.append(-sum(float(lp[p, t]) for p, t in row.targets) / len(row.targets))
    return float(nll[0] < nll[1])


def apply(model, delta) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for ld in delta.layers:
            ops.rank_update_(params[ld.name], ld.u, ld.v, transposed=ld.transposed)


def run(model, tokenizer, spec, method, requests, second_moment, fast: bool, overrides: dict):
    _, config_cls = editors.EDITORS[method]
    overrides = {k: v for k, v in overrides.items() if k in config_cls.__dataclass_fields__}
    if "fast" in config_cls.__dataclass_fields__:
        overrides = {**overrides, "fast": fast}
    elif not fast:
        return None  # no value optimisation, so no reference path (FT)
    editor = editors.create(method, spec, **overrides)
    ctx = EditContext(tokenizer, spec, second_moment=second_moment, seed=0)
    if hasattr(editor.config, "context_template_starts"):  # generated once per session: untimed
        editor_keys.context_templates(model, tokenizer, ctx, starts=editor.config.context_template_starts,
                                      length=editor.config.context_template_length)
    wall, cpu, eff, steps = [], [], [], []
    for request in requests:
        t0, c0 = time.perf_counter(), time.process_time()
        delta = editor.compute(model, [request], ctx)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if not delta.is_finite():
            raise RuntimeError(f"{method}: non-finite delta ({delta.non_finite_reason()})")
        apply(model, delta)
        editor.commit(delta)
        eff.append(efficacy(model, tokenizer, request))
        s = delta.info.get("steps", 0)  # per request for value-optimising editors, one number for FT
        steps.append(sum(s) if isinstance(s, list) else s)
    n = len(requests)
    return {"wall": sum(wall) / n, "cpu": sum(cpu) / n, "eff": sum(eff) / n, "steps": sum(steps) / n}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="sequential edits per method and path")
    ap.add_argument("--methods", default="rome,memit", help="comma-separated editor names")
    ap.add_argument("--quick", action="store_true", help="tiny random Llama instead of SmolLM2-135M")
    ap.add_argument("--stats-tokens", type=int, default=20000, help="token budget of the key statistics")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        model, tokenizer = tiny("llama", num_layers=6)
        overrides = {"v_num_grad_steps": 10}
    else:
        model, tokenizer = load("smollm2-135m")
        overrides = {}
    spec = model_spec(model)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    layers = sorted({*spec.default_edit_layers(), spec.default_rome_layer()})
    stats = second_moments(model, tokenizer, layers, max_tokens=args.stats_tokens, progress=False)
    c = {layer: mom for layer, (mom, _) in stats.items()}
    requests = data.load("counterfact", limit=args.n)
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}

    rows = []
    for method in methods:
        res = {}
        for fast in (True, False):
            model.load_state_dict(original)
            res[fast] = run(model, tokenizer, spec, method, requests, c.__getitem__, fast, overrides)
        rows.append((method, res))
    model.load_state_dict(original)

    name = "tiny-llama" if args.quick else "SmolLM2-135M"
    print(f"\nSequential editing, {name}, CPU ({torch.get_num_threads()} threads), n={args.n} CounterFact edits")
    print(f"{'method':<10} {'path':<10} {'s/edit':>8} {'cpu-s/edit':>11} {'efficacy':>9} {'steps':>6} {'speedup':>8}")
    for method, res in rows:
        for fast in (True, False):
            r = res[fast]
            if r is None:
                continue
            speed = res[False]["wall"] / r["wall"] if res[False] else float("nan")
            print(f"{method:<10} {'ours' if fast else 'reference':<10} {r['wall']:>8.2f} {r['cpu']:>11.2f} "
                  f"{r['eff']:>9.3f} {r['steps']:>6.1f} {speed:>7.2f}x")


if __name__ == "__main__":
    main()
