"""The `seqedit` command (also `python -m seqedit`).

    seqedit run CONFIG.yaml [--set key=value ...]   start a run, or continue it
    seqedit status RUN_DIR                          progress so far (read-only)
    seqedit report RUN_DIR / compare RUN_DIR ...    plots, table and HTML page
    seqedit export RUN_DIR --peft OUT               live edits as a LoRA adapter
    seqedit stats CONFIG.yaml                       precompute the key statistics
    seqedit eval RUN_DIR | --model NAME             run evaluators on a run or a model
    seqedit models / datasets                       what is available offline
    seqedit demo [--quick]                          MEMIT with and without D4S, compared

Exit codes: 0 done, 1 the work failed (message on stderr), 2 bad command line or config.
`--debug` shows the traceback instead of the one-line message.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


class UsageError(Exception):
    """A command-line mistake the parser cannot see (exit 2)."""


def _logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("seqedit")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def parser() -> argparse.ArgumentParser:
    from . import commands, demo

    ap = argparse.ArgumentParser(prog="seqedit", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:11]))
    ap.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parsers(sub)
    demo.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    # Third-party bars (transformers, lm-eval) would fill a log with carriage returns; tqdm reads
    # this variable when it is imported (by torch), so it is set before anything heavy loads.
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
    from .config import ConfigError

    ap = parser()
    args = ap.parse_args(argv)
    _logging(args.debug)
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, UsageError) as err:
        if args.debug:
            raise
        print(f"seqedit {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seqedit {args.command}: interrupted; run the same command again to continue",
              file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - one clear line; --debug shows the traceback
        if args.debug:
            raise
        print(f"seqedit {args.command}: {type(err).__name__}: {err}\n"
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1
