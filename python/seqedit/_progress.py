"""Progress of long work: a tqdm bar on a terminal, a few plain lines otherwise.

Logs and CI capture stderr as a file, where a bar's carriage returns turn into one unreadable
line; there a stage prints a line when it starts, at most one every `every_s` seconds (or each
tenth of the way) with its rate and ETA, and one when it ends. `SEQEDIT_PROGRESS=bar|lines|off`
overrides the choice.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


def _mode(stream: TextIO) -> str:
    forced = os.environ.get("SEQEDIT_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    isatty = getattr(stream, "isatty", None)
    return "bar" if callable(isatty) and isatty() else "lines"


def duration(seconds: float) -> str:
    """'42 s', '7.5 min', '2.3 h'."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """`with Progress(total, desc, unit) as p: ... p.update(n)`; `enabled=False` is silent."""

    def __init__(self, total: int, desc: str, unit: str = "it", *, enabled: bool = True,
                 initial: int = 0, unit_scale: bool = False, stream: TextIO | None = None,
                 every_s: float = 60.0) -> None:
        self.total, self.desc, self.unit, self.n = int(total), desc, unit, int(initial)
        self._stream = stream if stream is not None else sys.stderr
        self._mode = _mode(self._stream) if enabled else "off"
        self._every_s = every_s
        self._bar: Any = None
        self._start = self._last = time.monotonic()
        self._start_n = self._last_n = self.n
        if self._mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                             unit_scale=unit_scale, file=self._stream)
        elif self._mode == "lines":
            done = f", {self.n} done before" if self.n else ""
            self._line(f"{desc}: {self.total - self.n} {unit} to do{done}")

    def _line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def _status(self) -> str:
        elapsed = time.monotonic() - self._start
        made = self.n - self._start_n
        text = f"{self.desc}: {self.n}/{self.total} {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {duration(elapsed)}"
        if made > 0 and elapsed > 0:
            per = elapsed / made
            text += (f", {per:.2f} s/{self.unit}" if per >= 1 else
                     f", {made / elapsed:.1f} {self.unit}/s")
            left = self.total - self.n
            if left > 0:
                text += f", ETA {duration(left * per)}"
        return text

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._mode == "lines":
            now = time.monotonic()
            tenth = self.total and (self.n - self._last_n) * 10 >= self.total
            if (tenth or now - self._last >= self._every_s) and self.n < self.total:
                self._last, self._last_n = now, self.n
                self._line(self._status())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._mode == "lines":
            self._line(self._status() + (" — done" if self.n >= self.total else " — stopped"))
            self._mode = "off"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
