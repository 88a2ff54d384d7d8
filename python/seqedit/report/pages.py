"""The Markdown summary and the self-contained HTML page of a report.

The page embeds its PNGs as base64 `data:` URLs and its style inline: one file that opens
anywhere (mail, an offline laptop, a CI artefact) with no external resource and no script.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from . import tables

NO_EVALUATIONS = ("No evaluations recorded yet: the table and the checkpoint figures fill in "
                  "once the session has run its evaluators (at step 0, every `eval_every` "
                  "steps and at the end of each `edit()` call).")
NO_FIGURES = "No figures: none of the runs has recorded an edit or an evaluation yet."
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222;
       padding: 0 1em; line-height: 1.4; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child, th:first-child { text-align: left; }
th { background: #f2f2f2; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; }
.wide { overflow-x: auto; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _md(text: str) -> str:
    # A "|" in a cell (mean|W|) would end it.
    return text.replace("|", "\\|")


def markdown(title: str, runs: list[dict], figures: list[dict], generated: str) -> str:
    out = [f"# {title}", "", generated, "", "## Runs", ""]
    for r in runs:
        out += [f"### {r['label']}", ""]
        out += [f"- **{term}**: {text}" for term, text in tables.describe(r)]
        out.append("")
    headers, rows, notes = tables.table(runs)
    out += ["## Summary", ""]
    if rows:
        out += ["| " + " | ".join(map(_md, headers)) + " |",
                "|---|" + "---:|" * (len(headers) - 1)]
        out += ["| " + " | ".join(map(_md, row)) + " |" for row in rows]
        out += ["", "One row per run and checkpoint (an evaluated model state).", "",
                "### How each number was measured", ""]
        out += [f"- **{header}**: {text}" for header, text in notes]
    else:
        out.append(NO_EVALUATIONS)
    out += ["", "## Figures", ""]
    out += [f"![{f['title']}]({f['file']})\n" for f in figures] or [NO_FIGURES]
    return "\n".join(out) + "\n"


def _code(escaped: str) -> str:
    # The notes quote metric names the Markdown way, `name`.
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escaped)


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def page(title: str, runs: list[dict], figures: list[dict], out_dir: Path,
         generated: str) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
           f"<h1>{e(title)}</h1>", f'<p class="note">{e(generated)}</p>', "<h2>Runs</h2>"]
    for r in runs:
        out += [f"<h3>{e(r['label'])}</h3>", "<dl>"]
        out += [f"<dt>{e(term)}</dt><dd>{e(text)}</dd>" for term, text in tables.describe(r)]
        out.append("</dl>")
    headers, rows, notes = tables.table(runs)
    out.append("<h2>Summary</h2>")
    if rows:
        out += ['<div class="wide"><table><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in headers)
                + "</tr></thead><tbody>"]
        out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        out += ["</tbody></table></div>",
                '<p class="note">One row per run and checkpoint (an evaluated model state).</p>',
                "<h3>How each number was measured</h3>", "<ul>"]
        out += [f"<li><b>{e(h)}</b>: {_code(e(text))}</li>" for h, text in notes]
        out.append("</ul>")
    else:
        out.append(f"<p>{e(NO_EVALUATIONS)}</p>")
    out.append("<h2>Figures</h2>")
    for f in figures:
        out.append(f'<figure><img src="{_png(out_dir / f["file"])}" alt="{e(f["title"])}">'
                   f"<figcaption>{e(f['title'])}</figcaption></figure>")
    if not figures:
        out.append(f"<p>{e(NO_FIGURES)}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
