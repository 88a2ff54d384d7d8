"""`python -m seqedit.demo`: edit the packaged SmolLM2-135M, show what changed, roll one edit back.

Everything is offline. The first run converts the packaged GGUF to a safetensors copy and computes
key statistics once (both cached under $SEQEDIT_CACHE); later runs start in seconds.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from seqedit import data, metrics, models
from seqedit.session import EditSession


def _complete(model, tokenizer, prompt: str, n_tokens: int) -> str:
    ids = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return " ".join(text.split())


def _row(prompt: str, text: str) -> str:
    return f"    {prompt!r:<58} → {text!r}"


def _family_table(result) -> list[str]:
    """Rows: metric × family, after-all over the live edits (docs/protocol.md)."""
    rows = []
    for name, prompts in (("efficacy", "edit"), ("generalization", "paraphrase"),
                          ("locality", "neighborhood")):
        cells = []
        for family in ("binary", "token", "generation"):
            try:
                cells.append(f"{result.value(name, family=family, prompts=prompts):5.2f}")
            except KeyError:
                cells.append("    -")
        rows.append(f"    {name:<15} {'  '.join(f'{c:>10}' for c in cells)}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m seqedit.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="memit", help="rome, memit, alphaedit or ft")
    parser.add_argument("--n", type=int, default=3, help="number of CounterFact edits")
    parser.add_argument("--model", default="smollm2-135m", help="packaged name or local path")
    parser.add_argument("--stats-tokens", type=int, default=20_000,
                        help="corpus tokens for the key statistics (cached)")
    parser.add_argument("--ledger", default=None, help="ledger directory (default: a temp dir)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, tokenizer = models.load(args.model)
    spec = models.spec(model)
    print(f"seqedit demo: {args.model} ({spec.arch}, {spec.num_layers} layers), method "
          f"{args.method}, CPU threads {torch.get_num_threads()}; loaded in "
          f"{time.perf_counter() - t0:.1f} s")

    requests = data.load("counterfact", limit=args.n)
    print("\nBefore editing (greedy completions):")
    for r in requests:
        print(_row(r.filled_prompt, _complete(model, tokenizer, r.filled_prompt, 6)))

    ledger = args.ledger or tempfile.mkdtemp(prefix="seqedit-demo-")
    evaluators = [metrics.create("editing", fluency_prompts=0), metrics.create("health")]
    session = EditSession(model, tokenizer, method=args.method, ledger_dir=ledger,
                          stats_options={"max_tokens": args.stats_tokens},
                          evaluators=evaluators)
    print(f"\nEditing {len(requests)} facts one at a time (the first edit also computes key "
          "statistics once):")
    t0 = time.perf_counter()
    results = session.edit(requests, progress=False)
    total = time.perf_counter() - t0
    for r, res in zip(requests, results):
        pre, post = res.pre or {}, res.post or {}
        print(f"  edit {res.edit_id}: {r.subject}: {r.target_true!r} → {r.target_new!r}  "
              f"P(new) {pre.get('new', float('nan')):.3f} → {post.get('new', float('nan')):.3f}  "
              f"{res.status}{'' if res.success else ' (not successful)'}  "
              f"{res.timings.get('total_s', float('nan')):.1f} s")
    applied = sum(r.applied for r in results)
    print(f"  {applied}/{len(results)} applied, "
          f"{sum(bool(r.success) for r in results)}/{len(results)} successful, {total:.1f} s in all")

    print("\nAfter editing:")
    for r in requests:
        print(_row(r.filled_prompt, _complete(model, tokenizer, r.filled_prompt, 6)))
        for p in r.paraphrase_prompts[:1]:
            print(_row(p, _complete(model, tokenizer, p, 6)) + "   (paraphrase)")
        for p, answer in r.neighborhood_prompts[:1]:
            print(_row(p, _complete(model, tokenizer, p, 6)) + f"   (neighbour, expects {answer!r})")

    editing, health = session.evaluate()
    print(f"\nEditing metrics over the {editing.live_edits} live edits (after-all; "
          "docs/protocol.md):")
    print(f"    {'':<15} {'binary':>10}  {'token':>10}  {'generation':>10}")
    print("\n".join(_family_table(editing)))

    print("\nWeight health of the edited matrices (ΔW = W − W0, all live edits together):")
    for name in health.info["base"]:
        print(f"    {name:<40} ‖ΔW‖/‖W0‖ = {health.value('delta_fro_ratio', weight=name):.3f}  "
              f"σmax(ΔW)/σmax(W0) = {health.value('sigma_max_delta_ratio', weight=name):.3f}  "
              f"κ(W)/κ(W0) = {health.value('condition_ratio', weight=name):.2f}")
    for alarm in health.info["alarms"]:
        print(f"    alarm: {alarm}")

    first = results[0]
    if first.applied:
        session.rollback(first.edit_id)
        r = requests[0]
        print(f"\nRolled back edit {first.edit_id} (exact subtraction of its factors):")
        print(_row(r.filled_prompt, _complete(model, tokenizer, r.filled_prompt, 6)))
    print(f"\nLedger: {session.directory}/ledger.jsonl")
    session.close()


if __name__ == "__main__":
    main()
