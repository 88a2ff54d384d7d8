"""What measuring the damage costs: batched editing metrics, weight health, a general-ability probe.

    python bench/eval.py                       # SmolLM2-135M, 100 CounterFact requests, 2 MEMIT edits
    python bench/eval.py --requests 30 --edits 1 --skip-general   # quicker

1. Editing metrics: prompts/s of `metrics.create("editing")` (one batched teacher-forced pass and
   one left-padded greedy pass over every prompt) against the way existing tools do it: one
   forward per (prompt, target) and one `model.generate` per prompt. Both on the same model in
   the same process, alternating, medians reported; the loop's raw reads are compared with
   `scoring.read_prompts` on the same prompts (largest probability difference, identical
   generations), so the two compute the same numbers.
2. Weight health after an edit as a fraction of the MEMIT edit it follows (the session's
   after-each call, measured on real MEMIT edits on the same model).
3. A quick general-ability probe (WikiText-2, 4 articles ≈ 8.7k tokens, + SST-2 and the cloze
   CommonsenseQA, `limit` items each: two tasks where the unedited SmolLM2-135M is above chance)
   in seconds and as a fraction of 100 MEMIT edits at the measured s/edit.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from seqedit import data, metrics, models
from seqedit.editors._text import target_ids
from seqedit.metrics import scoring
from seqedit.metrics.base import EvalContext


def prompt_items(requests) -> list[tuple]:
    """(prompt, the target a generation must start with, the other scored target or None)."""
    items = []
    for r in requests:
        items += [(p, r.target_new, r.target_true) for p in (r.filled_prompt, *r.paraphrase_prompts)]
        items += [(p, a, r.target_new) for p, a in r.neighborhood_prompts]
    return items


def per_prompt_loop(model, tok, requests, slack: int) -> tuple[list, list]:
    """The editing metrics' raw reads one prompt at a time (the existing tools' way)."""
    probs, texts = [], []
    for prompt, first, second in prompt_items(requests):
        for target in (first, second):
            if target is None:
                continue
            head = tok(prompt)["input_ids"]
            tail = target_ids(tok, target)
            ids = torch.tensor([head + tail[:-1]])
            with torch.no_grad():
                logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
            pos = torch.arange(len(head) - 1, len(head) + len(tail) - 1)
            probs.append(float(logp[pos, tail].mean().exp()))
        enc = tok(prompt, return_tensors="pt")
        budget = len(target_ids(tok, first)) + slack
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=budget, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        texts.append(new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new)
    return probs, texts


def bench_editing(model, tok, requests, rounds: int) -> dict:
    ev = metrics.create("editing", portability=False, multihop=False, fluency_prompts=0)
    ctx = EvalContext(tokenizer=tok, spec=models.spec(model), live_requests=lambda: requests)
    ev.prepare(model, ctx)
    ev.evaluate(model, ctx)  # fills the unedited-reference cache, as a run's step-0 would
    n_prompts = sum(1 + len(r.paraphrase_prompts) + len(r.neighborhood_prompts) for r in requests)
    ours, loop = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        ev.evaluate(model, ctx)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        probs, texts = per_prompt_loop(model, tok, requests, ev.config.generation_slack)
        loop.append(time.perf_counter() - t)
    readings = scoring.read_prompts(model, tok, [
        scoring.Query(p, tuple(t for t in (first, second) if t is not None),
                      len(target_ids(tok, first)) + ev.config.generation_slack)
        for p, first, second in prompt_items(requests)])
    shared = [s.prob for r in readings for s in r.scores]
    a, b = statistics.median(ours), statistics.median(loop)
    return {"prompts": n_prompts, "ours_s": a, "loop_s": b, "ours_prompts_per_s": n_prompts / a,
            "loop_prompts_per_s": n_prompts / b, "ratio": b / a,
            "max_prob_diff": max(abs(x - y) for x, y in zip(probs, shared)),
            "same_generations": sum(list(r.generated) == t for r, t in zip(readings, texts))}


def bench_health(model, tok, n_edits: int, stats_tokens: int) -> dict:
    from seqedit.session import EditSession

    health = metrics.create("health")
    session = EditSession(model, tok, method="memit", evaluators=[health], eval_every=None,
                          stats_options={"max_tokens": stats_tokens})
    session.edit(data.load("counterfact", limit=1), progress=False)  # statistics, warm-up
    results = session.edit(data.load("counterfact", limit=1 + n_edits)[1:], progress=False)
    edit_s = [r.timings["total_s"] - r.timings.get("after_each_s", 0.0) for r in results]
    health_s = [rec["evaluations"]["health"]["seconds"] for rec in session.records()
                if rec.get("type") == "edit" and rec["edit_id"] >= 1]
    session.close()
    e, h = statistics.median(edit_s), statistics.median(health_s)
    return {"edits": n_edits, "edit_s": e, "health_s": h, "fraction": h / e}


def bench_general(model, tok, limit: int, edit_s: float) -> dict:
    ev = metrics.create("general", tasks=["wikitext", "sst2", "commonsenseqa_cloze"], limit=limit,
                        task_limits={"wikitext": 4})
    spec = models.spec(model)
    ctx = EvalContext(tokenizer=tok, spec=spec)
    ev.prepare(model, ctx)
    t = time.perf_counter()
    result = ev.evaluate(model, ctx)
    seconds = time.perf_counter() - t
    return {"limit": limit, "seconds": seconds, "fraction_of_100_edits": seconds / (100 * edit_s),
            "scores": {m.label: m.value for m in result.metrics}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=100, help="CounterFact requests scored")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    ap.add_argument("--edits", type=int, default=2, help="MEMIT edits timed for the health cost")
    ap.add_argument("--stats-tokens", type=int, default=20000)
    ap.add_argument("--limit", type=int, default=200, help="items per general-ability task")
    ap.add_argument("--skip-general", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = models.load(args.model)
    requests = data.load("counterfact", limit=args.requests)
    print(f"bench/eval.py: {args.model}, {args.threads} thread(s), {torch.__version__}")
    e = bench_editing(model, tok, requests, args.rounds)
    print(f"editing metrics: {e['prompts']} prompts, batched {e['ours_s']:.2f} s "
          f"({e['ours_prompts_per_s']:.1f} prompts/s) vs per-prompt loop {e['loop_s']:.2f} s "
          f"({e['loop_prompts_per_s']:.1f} prompts/s): {e['ratio']:.1f}x; same reads: max |dP| "
          f"{e['max_prob_diff']:.1e}, generations identical {e['same_generations']}/{e['prompts']}")
    h = bench_health(model, tok, args.edits, args.stats_tokens)
    print(f"weight health after an edit: {h['health_s'] * 1000:.0f} ms vs a MEMIT edit "
          f"{h['edit_s']:.1f} s: {100 * h['fraction']:.2f}% (median of {h['edits']} edits)")
    if not args.skip_general:
        model, tok = models.load(args.model)  # unedited again
        g = bench_general(model, tok, args.limit, h["edit_s"])
        print(f"general probe (wikitext 4 articles + sst2 + commonsenseqa_cloze, limit "
              f"{g['limit']}): {g['seconds']:.1f} s = {100 * g['fraction_of_100_edits']:.1f}% "
              "of 100 MEMIT edits")
        for label, value in g["scores"].items():
            print(f"    {label}: {value}")


if __name__ == "__main__":
    main()
