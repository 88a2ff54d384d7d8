"""The summary table (one row per run and checkpoint), its "how measured" notes and the run
descriptions, as plain strings shared by the Markdown and the HTML page."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    header: str
    prefix: str | None = None  # series keys equal to it or below it ("prefix/...")
    reduce: str = "mean"  # how several matching series (layers) become one cell: mean | max
    checkpoint: str | None = None  # or a field of the checkpoint itself


HEAD = (Column("live edits", checkpoint="x"),
        Column("eff. after each", checkpoint="efficacy_after_each"),
        Column("efficacy", "editing/efficacy/binary"),
        Column("eff. (gen.)", "editing/efficacy/generation"),
        Column("generalization", "editing/generalization/binary"),
        Column("specificity", "editing/specificity/binary"),
        Column("locality", "editing/locality/binary"))
TAIL = (Column("mean|W| ratio (max layer)", "health/l1_ratio/after-all", "max"),
        Column("σmax ΔW/W₀ (max layer)", "health/sigma_max_delta_ratio/after-all", "max"),
        Column("κ ratio (max layer)", "health/condition_ratio/after-all", "max"),
        Column("GORA impact", "gora/impact"),
        Column("s/edit", checkpoint="s_per_edit"))
CHECKPOINT_NOTES = {
    "x": "edit requests live in the model at the checkpoint (applied, not rolled back)",
    "efficacy_after_each": "the session's probe right after each edit, P(target_new) > "
                           "P(target_true) on the rewrite prompt, mean over every request "
                           "applied so far",
    "s_per_edit": "mean seconds per request of compute + guards + write + apply + commit so far "
                  "(probes and evaluations excluded): amortised, so the steps in which D4S "
                  "optimises a batch of targets ahead count in full — and so does a step timed "
                  "while the process was paused"}


def _matches(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + "/")


def columns(runs: list[dict]) -> list[Column]:
    """HEAD, one column per general task's primary score (as the runs have them), TAIL."""
    general = {}
    for r in runs:
        for s in r["series"]:
            if s["evaluator"] == "general" and s.get("primary") and s["schedule"] == "after-all":
                p = s["protocol"]
                # Spaces, not underscores, so a narrow column can wrap its header.
                header = f"{p.get('task', '?')} {p.get('metric', '')}".replace("_", " ")
                general.setdefault(s["key"], header.strip())
    return [*HEAD, *(Column(h, k) for k, h in general.items()), *TAIL]


def cell(run: dict, checkpoint: dict, column: Column) -> float | None:
    if column.checkpoint:
        return checkpoint.get(column.checkpoint)
    found = [v for s in run["series"] if _matches(s["key"], column.prefix)
             for state, v in zip(s["state"], s["value"])
             if state == checkpoint["state"] and s["schedule"] == "after-all"]
    if not found:
        return None
    return max(found) if column.reduce == "max" else sum(found) / len(found)


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{int(value)}"
    return f"{value:.3g}"


def table(runs: list[dict]) -> tuple[list[str], list[list[str]], list[tuple[str, str]]]:
    """(headers, rows of cells, [(header, how it was measured)]) over the columns with data."""
    cols = columns(runs)
    grid = [(r, cp, [cell(r, cp, c) for c in cols]) for r in runs for cp in r["checkpoints"]]
    keep = [j for j, c in enumerate(cols)
            if j == 0 or any(values[j] is not None for _, _, values in grid)]
    headers = ["run"] + [cols[j].header for j in keep]
    rows = [[r["label"]] + [fmt(values[j]) for j in keep] for r, _, values in grid]
    return headers, rows, [(cols[j].header, measured(runs, cols[j])) for j in keep]


def _protocol_text(series: dict) -> str:
    p = {k: v for k, v in series["protocol"].items() if k not in ("weight", "task")}
    return f"{series['evaluator']} `{series['metric']}`: " + ", ".join(
        f"{k}={v}" for k, v in p.items())


def measured(runs: list[dict], column: Column) -> str:
    """How the numbers of `column` were measured, from the protocols the runs recorded."""
    if column.checkpoint:
        return CHECKPOINT_NOTES[column.checkpoint]
    texts, weights = [], set()
    for r in runs:
        for s in r["series"]:
            if _matches(s["key"], column.prefix) and s["schedule"] == "after-all":
                texts.append(_protocol_text(s))
                if s["protocol"].get("weight"):
                    weights.add(s["protocol"]["weight"])
    text = "; ".join(dict.fromkeys(texts))  # distinct, in order
    if len(weights) > 1:
        text += f"; the {column.reduce} over {len(weights)} weights ({', '.join(sorted(weights))})"
    return text


def _guards(guards: list) -> str:
    if not guards:
        return "none"
    out = []
    for g in guards:
        g = g if isinstance(g, dict) else {"name": str(g)}
        options = ", ".join(f"{k}={v}" for k, v in (g.get("config") or {}).items())
        out.append(f"{g.get('name', '?')}" + (f" ({options})" if options else ""))
    return "; ".join(out)


def _model(model: dict) -> str:
    if not model:
        return "not recorded"
    sizes = ", ".join(f"{k.replace('_', ' ')} {model[k]}" for k in
                      ("arch", "num_layers", "hidden_size") if k in model)
    return f"{model.get('class', '?')} ({sizes}) from {model.get('name_or_path', '?')}"


def describe(run: dict) -> list[tuple[str, str]]:
    """(term, text) pairs that say what the run is: model, method, guards, edits, evaluators."""
    m, e = run["manifest"], run["edits"]
    edits = (f"{e['applied']} steps applied ({e['requests_applied']} requests), {e['refused']} "
             f"refused, {e['rolled_back']} rolled back; {e['live_requests']} requests live in "
             f"{e['live']} edits")
    if run["evaluators"]:
        n = len(run["checkpoints"])
        evals = f"{n} checkpoint{'s' if n != 1 else ''}; " + "; ".join(
            f"{name} ({', '.join(f'{k}={v}' for k, v in cfg.items())})"
            for name, cfg in run["evaluators"].items())
    else:
        evals = "no evaluations recorded yet"
    return [("directory", run["session"]), ("model", _model(m.get("model") or {})),
            ("method", f"{m.get('method', '?')} (config {m.get('config_hash', '?')}, "
                       f"seed {m.get('seed', '?')})"),
            ("guards", _guards(m.get("guards") or [])), ("edits", edits),
            ("evaluations", evals),
            ("created", f"{m.get('created', '?')} with seqedit {m.get('seqedit_version', '?')}")]
