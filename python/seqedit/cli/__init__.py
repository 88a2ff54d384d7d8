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
import contextlib
import logging
import os
import sys


class UsageError(Exception):
    """A command-line mistake the parser cannot see (exit 2)."""


class _NoRedraws:
    """stderr for a log file: drops progress-bar redraws (writes holding a carriage return, and
    the newline that closes a bar), which some libraries draw even with TQDM_DISABLE set."""

    def __init__(self, stream) -> None:
        self._stream, self._in_bar = stream, False

    def write(self, text: str) -> int:
        if "\r" in text:
            self._in_bar = True
        elif not (self._in_bar and text == "\n"):
            self._in_bar = False
            self._stream.write(text)
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _logging(debug: bool):
    """seqedit's log lines on stderr with a timestamp, lm-eval's chatter quieted; restored
    afterwards (main may run inside another program, or a test)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ours, theirs = logging.getLogger("seqedit"), logging.getLogger("lm_eval")
    saved = ours.handlers[:], ours.level, ours.propagate, theirs.level
    ours.handlers[:] = [handler]
    ours.setLevel(logging.DEBUG if debug else logging.INFO)
    ours.propagate = False
    env = os.environ.get("LMEVAL_LOG_LEVEL")
    if not debug:  # lm-eval explains its internals at WARNING on every call, and resets its
        # logger's level from this variable each time
        os.environ["LMEVAL_LOG_LEVEL"] = env or "ERROR"
    try:
        yield
    finally:
        ours.handlers[:], level, ours.propagate, their_level = saved
        ours.setLevel(level)
        theirs.setLevel(their_level)
        if env is None:
            os.environ.pop("LMEVAL_LOG_LEVEL", None)


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
    if sys.stderr.isatty():
        return _main(argv)
    # Third-party bars (transformers, lm-eval) would fill a log with carriage returns; tqdm reads
    # this variable when it is imported (by torch), so it is set before anything heavy loads.
    os.environ.setdefault("TQDM_DISABLE", "1")
    stderr, sys.stderr = sys.stderr, _NoRedraws(sys.stderr)
    try:
        return _main(argv)
    finally:
        sys.stderr = stderr


def _main(argv: list[str] | None) -> int:
    from .config import ConfigError

    ap = parser()
    args = ap.parse_args(argv)
    try:
        with _logging(args.debug):
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
