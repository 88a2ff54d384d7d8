"""`write`: read the runs, draw their figures and write the report files."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .._atomic import replace_atomic, write_atomic
from .._version import __version__
from . import figures, pages
from .series import default_label, summarise

# Every figure a report can have: one left over from an earlier report into the same folder is
# removed, so the folder never shows a figure the runs no longer call for.
FIGURE_NAMES = ("editing", "general", "perplexity", "health", "gora", "timing", "other")


def _labels(runs: list, labels: list[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(runs):
            raise ValueError(f"report: {len(labels)} labels for {len(runs)} runs")
        return [str(label) for label in labels]
    names = [default_label(r) for r in runs]
    if len(set(names)) < len(names):  # e.g. two groups' "memit": say which group
        names = ["/".join(Path(r).resolve().parts[-2:]) for r in runs]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def write(runs: list[str | os.PathLike] | str | os.PathLike, out_dir: str | os.PathLike,
          title: str | None = None, labels: list[str] | None = None) -> dict[str, Any]:
    """Report on one or several session directories (or CLI run directories holding the session
    in `session/`) into `out_dir`: report.md, report.html (self-contained), report.json (the
    series) and one PNG per group of metrics the runs have.

    Returns {"markdown": Path, "html": Path, "json": Path, "plots": [Path, ...], "figures":
    [what each PNG drew]}. Raises ReportError naming a directory that holds no readable session.
    Safe while a run is being written: it is read up to its last committed line.
    """
    runs = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    if not runs:
        raise ValueError("report: no runs given")
    names = _labels(runs, labels)
    return write_summaries([summarise(r, label) for r, label in zip(runs, names)], out_dir, title)


def write_summaries(summaries: list[dict[str, Any]], out_dir: str | os.PathLike,
                    title: str | None = None, note: str = "") -> dict[str, Any]:
    """`write` from runs already read: `summarise`'s dicts, or the "runs" of an earlier
    report.json (a report outlives the ledgers it was read from). `note` ends the report's
    "written by" line."""
    if not summaries:
        raise ValueError("report: no runs given")
    names = [s["label"] for s in summaries]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if title is None:
        title = (f"seqedit report — {names[0]}" if len(names) == 1
                 else f"seqedit compare — {' vs '.join(names)}")
    n = len(summaries)
    generated = (f"Written by seqedit {__version__} on {time.strftime('%Y-%m-%d %H:%M')} from "
                 f"{n} run{'s' if n > 1 else ''}; x axes: edit requests live in the model."
                 + (f" {note}" if note else ""))
    drawn = []
    for plan in figures.plans(summaries):
        record: dict[str, Any] = {}
        replace_atomic(out / f"{plan.name}.png",
                       lambda tmp, plan=plan: record.update(figures.draw(plan, tmp, names)))
        drawn.append(record)
    for name in set(FIGURE_NAMES) - {f["name"] for f in drawn}:
        (out / f"{name}.png").unlink(missing_ok=True)
    paths = {"markdown": out / "report.md", "html": out / "report.html",
             "json": out / "report.json"}
    write_atomic(paths["markdown"], pages.markdown(title, summaries, drawn, generated).encode())
    write_atomic(paths["html"], pages.page(title, summaries, drawn, out, generated).encode())
    write_atomic(paths["json"], json.dumps({"title": title, "generated": generated,
                                            "runs": summaries, "figures": drawn},
                                           indent=1, ensure_ascii=False).encode())
    return {**paths, "plots": [out / f["file"] for f in drawn], "figures": drawn}
