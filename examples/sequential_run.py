"""A long sequential editing run that survives being killed: the same command resumes it.

    python examples/sequential_run.py --dir runs/memit-1000 --n 1000            # start, or resume
    python examples/sequential_run.py --dir runs/memit-1000 --n 1000 --rollback 17 --export adapter/
    seqedit status runs/memit-1000                                      # progress, read-only

The first call creates a session directory (manifest, ledger, per-edit deltas) and edits the first
N CounterFact records one at a time. Kill it at any point (Ctrl-C, SIGKILL, a crash): the next
call reopens the directory on a freshly loaded base model, replays the committed edits, and edits
only the records the ledger does not have: no edit is lost or applied twice. `--rollback` removes
edits exactly; `--export` writes the live edits as a PEFT LoRA adapter for the base model.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from seqedit import data, models
from seqedit.session import EditSession
from seqedit.session.ledger import MANIFEST


def open_session(directory: Path, model, tokenizer, method: str, options: dict, **config):
    """Resume the session in `directory` if there is one, else start it there."""
    if (directory / MANIFEST).exists():
        session = EditSession.resume(directory, model, tokenizer, stats_options=options)
        if session.method != method:
            session.close()
            raise SystemExit(f"{directory} holds a {session.method!r} session, not {method!r}")
        print(f"resumed {directory}: {len(session.live_edits)} live edits replayed")
        return session
    print(f"new session in {directory}")
    return EditSession(model, tokenizer, method=method, ledger_dir=directory, stats_options=options,
                       **config)


def run(model, tokenizer, directory, *, n: int, method: str = "memit", stats_options=None,
        rollback=(), export=None, export_rank=None, progress: bool = True, **config) -> dict:
    """Edit the first `n` CounterFact records in the session at `directory`; `config` sets the
    editor's hyperparameters of a new session (a resumed one keeps those in its manifest)."""
    directory = Path(directory)
    requests = data.load("counterfact", limit=n)
    with open_session(directory, model, tokenizer, method, stats_options or {}, **config) as session:
        todo = len(session.pending(requests))
        start = time.perf_counter()
        results = session.edit(requests, progress=progress)
        elapsed = time.perf_counter() - start
        new = [r for r in results if r.status != "skipped"]
        summary = {
            "requests": len(requests), "skipped_as_done": len(requests) - todo, "edited_now": len(new),
            "applied_now": sum(r.applied for r in new), "successful_now": sum(bool(r.success) for r in new),
            "seconds_per_edit": elapsed / len(new) if new else None,
        }
        for edit_id in rollback:
            session.rollback(edit_id)
        summary["live_edits"] = len(session.live_edits)
        if export is not None:
            report = session.export_peft(export, rank=export_rank)
            summary["export"] = str(export)
            summary["export_rank"] = report["r"]
            summary["export_max_rel_fro_error"] = report["max_rel_fro_error"]
    return summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="session directory (created, or resumed if it exists)")
    ap.add_argument("--n", type=int, default=1000, help="edit the first N CounterFact records")
    ap.add_argument("--method", default="memit", help="rome, memit, alphaedit or ft")
    ap.add_argument("--model", default="smollm2-135m", help="packaged model name or local path")
    ap.add_argument("--stats-tokens", type=int, default=None,
                    help="corpus tokens for key statistics (default: the library's, shared cache)")
    ap.add_argument("--rollback", type=int, nargs="*", default=(), help="edit ids to roll back afterwards")
    ap.add_argument("--export", default=None, help="write the live edits as a PEFT adapter here")
    ap.add_argument("--export-rank", type=int, default=None, help="truncate the adapter to this rank")
    args = ap.parse_args(argv)
    model, tokenizer = models.load(args.model)
    summary = run(model, tokenizer, args.dir, n=args.n, method=args.method,
                  stats_options={"max_tokens": args.stats_tokens} if args.stats_tokens else None,
                  rollback=args.rollback, export=args.export, export_rank=args.export_rank)
    for key, value in summary.items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
