"""Which curves go into which figure (`plans`), and drawing a plan as a PNG (`draw`).

Planning is plain Python on the summaries, so what a figure shows can be tested without
matplotlib. Drawing uses matplotlib's object API on an Agg canvas, imported inside `draw`: no
pyplot, so no global backend switch, no open figures left in a notebook, and `import seqedit`
never needs matplotlib.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

X_LABEL = "live edits (requests in the model)"
FRACTION = "fraction (higher is better)"
EDITING_ORDER = ("efficacy", "generalization", "specificity", "locality", "portability",
                 "multihop", "fluency")
HEALTH = (("l1_ratio", "mean |W| / mean |W₀|"),
          ("sigma_max_delta_ratio", "σ_max(ΔW) / σ_max(W₀)"),
          ("condition_ratio", "κ(W) / κ(W₀)  (condition number)"),
          ("delta_fro_ratio", "‖ΔW‖_F / ‖W₀‖_F"))
GORA = (("ged", "edge difference of the kNN graph"), ("ged_ego", "ego-graph edit distance"),
        ("impact", "flip rate: neighbours − random"), ("flip_neighbours", "flip rate"),
        ("flip_random", "flip rate"), ("target_change", "hidden-state change"),
        ("outliers", "outlier probes"))
KNOWN = {"session", "editing", "health", "general", "gora"}
STYLES = ("-", "--", ":", "-.")


@dataclass
class Line:
    run: int  # index into the runs
    series: str  # the series key (several for a max over layers, joined by ", ")
    variant: str  # what tells it apart from the panel's other lines of the same run
    x: list[float]
    y: list[float]


@dataclass
class Panel:
    title: str
    ylabel: str
    lines: list[Line] = field(default_factory=list)
    fraction: bool = False  # y in [0, 1]: fix the axis so runs compare at a glance
    references: list[tuple[str, float]] = field(default_factory=list)  # dotted levels


@dataclass
class Plan:
    name: str  # the PNG's file stem
    title: str
    panels: list[Panel]


def _select(run: dict, evaluator: str, metric: str | None = None, **protocol) -> list[dict]:
    return [s for s in run["series"] if s["evaluator"] == evaluator
            and (metric is None or s["metric"] == metric)
            and all(s["protocol"].get(k) == v for k, v in protocol.items())]


def _line(i: int, s: dict, variant: str) -> Line:
    return Line(i, s["key"], variant, list(s["x"]), list(s["value"]))


def _editing(runs: list[dict]) -> Plan | None:
    names = {s["metric"] for r in runs for s in _select(r, "editing", schedule="after-all")}
    names.discard("margin")  # a diagnostic of the binary score, not a score
    order = [n for n in EDITING_ORDER if n in names] + sorted(names - set(EDITING_ORDER))
    if any(_select(r, "session", "efficacy_after_each") for r in runs) and "efficacy" not in order:
        order.insert(0, "efficacy")
    panels = []
    for name in order:
        lines, proto = [], {}
        for i, r in enumerate(runs):
            for s in _select(r, "editing", name, schedule="after-all"):
                proto = proto or s["protocol"]
                lines.append(_line(i, s, s["protocol"].get("family", "?")))
            if name == "efficacy":
                lines += [_line(i, s, "right after each edit (cumulative)")
                          for s in _select(r, "session", "efficacy_after_each")]
        title = f"{name} — {proto.get('prompts', 'edit')} prompts"
        if proto.get("reference"):
            title += f", vs {proto['reference']}"
        fluency = name == "fluency"
        panels.append(Panel(title, "n-gram entropy (higher is more fluent)" if fluency
                            else FRACTION, lines, fraction=not fluency))
    return Plan("editing", "Editing metrics on the live edits (after all edits so far; "
                "line style = family: binary, token, generation)", panels) if panels else None


def _by_layer(series: list[dict]) -> dict[str, Line]:
    """Per layer, one line through the points of every schedule (after each edit, and the
    checkpoints, which add the unedited x = 0); after-each wins where both measured an x."""
    merged: dict[str, tuple[list[str], dict[float, float]]] = {}
    for s in sorted(series, key=lambda s: s["schedule"] != "after-each"):
        keys, points = merged.setdefault(s["key"].rsplit("/", 1)[-1], ([], {}))
        keys.append(s["key"])
        for x, v in zip(s["x"], s["value"]):
            points.setdefault(x, v)
    return {layer: Line(0, ", ".join(keys), layer, sorted(p), [p[x] for x in sorted(p)])
            for layer, (keys, p) in merged.items()}


def _health(runs: list[dict]) -> Plan | None:
    panels, per_layer = [], len(runs) == 1
    for metric, ylabel in HEALTH:
        lines, schedules = [], set()
        for i, r in enumerate(runs):
            found = _select(r, "health", metric)
            if not found:
                continue
            schedules.update(s["schedule"] for s in found)
            layers = _by_layer(found)
            if per_layer:
                lines += list(layers.values())
            else:
                best: dict[float, float] = {}
                for ln in layers.values():
                    for x, y in zip(ln.x, ln.y):
                        best[x] = max(y, best.get(x, y))
                lines.append(Line(i, ", ".join(s["key"] for s in found), "max over layers",
                                  sorted(best), [best[x] for x in sorted(best)]))
        if lines:
            how = "per layer" if per_layer else f"max over {len(layers)} layers"
            when = ("after each edit" if "after-each" in schedules else "at checkpoints")
            panels.append(Panel(f"{ylabel} — {how}, {when}", "ratio (1 = unedited)", lines))
    return Plan("health", "Weight health of the edited matrices (ratios to the unedited "
                "weights W₀)", panels) if panels else None


def _general(runs: list[dict], perplexity: bool) -> Plan | None:
    panels: dict[tuple[str, str], Panel] = {}
    for i, r in enumerate(runs):
        for s in _select(r, "general", schedule="after-all"):
            p = s["protocol"]
            metric = p.get("metric", s["metric"])
            if ("perplexity" in metric) != perplexity or not (perplexity or s.get("primary")):
                continue
            key = (p.get("task", "?"), metric)
            if key not in panels:
                docs = f"{p['limit']} docs, " if p.get("limit") is not None else ""
                title = (f"{key[0]} {metric.replace('_', ' ')} ({docs}"
                         f"{p.get('num_fewshot', 0)}-shot)")
                panels[key] = Panel(title, "perplexity (lower is better)" if perplexity
                                    else "accuracy", fraction=not perplexity)
            panel = panels[key]
            panel.lines.append(_line(i, s, metric))
            if s.get("chance") is not None and not panel.references:
                panel.references.append(("chance", s["chance"]))
    if not panels:
        return None
    if perplexity:
        return Plan("perplexity", "Language modelling (lm-eval harness; lower is better)",
                    list(panels.values()))
    return Plan("general", "General ability: each task's primary score (lm-eval harness)",
                list(panels.values()))


def _gora(runs: list[dict]) -> Plan | None:
    panels = []
    for metric, ylabel in GORA:
        lines, reading = [], "?"
        for i, r in enumerate(runs):
            for s in _select(r, "gora", metric):
                reading = s["protocol"].get("reading", reading)
                lines.append(_line(i, s, metric))
        if lines:
            panels.append(Panel(f"{metric} (reading {reading})", ylabel, lines))
    return Plan("gora", "GORA (experimental): ripple damage in hidden space",
                panels) if panels else None


def _timing(runs: list[dict]) -> Plan | None:
    lines = [_line(i, s, "per step") for i, r in enumerate(runs)
             for s in _select(r, "session", "seconds_per_edit")]
    if not lines:
        return None
    stages = next(s["protocol"].get("stages", "?") for r in runs
                  for s in _select(r, "session", "seconds_per_edit"))
    return Plan("timing", "Editing cost", [Panel(f"seconds per edit request ({stages})",
                                                 "seconds", lines)])


def _other(runs: list[dict]) -> Plan | None:
    panels: dict[str, Panel] = {}
    for i, r in enumerate(runs):
        for s in r["series"]:
            if s["evaluator"] in KNOWN or s["schedule"] != "after-all":
                continue
            panel = panels.setdefault(s["key"], Panel(s["key"], s["metric"]))
            panel.lines.append(_line(i, s, s["metric"]))
    return Plan("other", "Other evaluators (after all edits so far)",
                list(panels.values())[:12]) if panels else None


def plans(runs: list[dict]) -> list[Plan]:
    """The figures the runs' series call for, in reading order; a group without series is left
    out."""
    found = [_editing(runs), _general(runs, perplexity=False), _general(runs, perplexity=True),
             _health(runs), _gora(runs), _timing(runs), _other(runs)]
    return [p for p in found if p is not None]


def _legend(plan: Plan, labels: list[str], variants: list[str], colours: list[str]):
    """Proxy lines: with several runs one per run (its colour) and one per variant (its line
    style, in grey); with one run one per variant (colour and style)."""
    from matplotlib.lines import Line2D

    if len(labels) == 1:
        return [(Line2D([], [], color=colours[v % len(colours)], linestyle=STYLES[v % 4]), name)
                for v, name in enumerate(variants)]
    runs = sorted({ln.run for p in plan.panels for ln in p.lines})
    out = [(Line2D([], [], color=colours[i % len(colours)], linewidth=2.5), labels[i])
           for i in runs]
    if len(variants) > 1:
        out += [(Line2D([], [], color="0.35", linestyle=STYLES[v % 4]), name)
                for v, name in enumerate(variants)]
    return out


def draw(plan: Plan, path: Path, labels: list[str]) -> dict[str, Any]:
    """Draw `plan` as a PNG into `path`; returns what was drawn: {name, title, file (the name
    it is written under: `<name>.png`), panels: [{title, ylabel, lines: [{run, series, variant,
    points}]}]}."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as err:
        raise ImportError("seqedit.report draws with matplotlib: pip install "
                          "'seqedit[report]' (or matplotlib>=3.8)") from err
    cols = min(len(plan.panels), 3 if len(plan.panels) != 4 else 2)
    rows = -(-len(plan.panels) // cols)
    fig = Figure(figsize=(5.4 * cols, 3.9 * rows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    colours = [f"C{i}" for i in range(10)]
    # One style per variant across the whole figure, so a legend entry means the same everywhere.
    variants = list(dict.fromkeys(ln.variant for p in plan.panels for ln in p.lines))
    for n, panel in enumerate(plan.panels):
        ax = fig.add_subplot(rows, cols, n + 1)
        for ln in panel.lines:
            v = variants.index(ln.variant)
            colour = colours[(ln.run if len(labels) > 1 else v) % len(colours)]
            dense = len(ln.x) > 40
            ax.plot(ln.x, ln.y, STYLES[v % len(STYLES)], color=colour,
                    marker=None if dense else "o", markersize=3.5,
                    linewidth=1.2 if dense else 1.6)
        for name, level in panel.references:
            ax.axhline(level, color="0.45", linestyle=":", linewidth=1)
            ax.annotate(name, (0.01, level), xycoords=("axes fraction", "data"), ha="left",
                        va="bottom", fontsize=8, color="0.35")
        if panel.fraction:
            ax.set_ylim(-0.03, 1.03)
        else:
            ys = [y for ln in panel.lines for y in ln.y if y > 0]
            if ys and max(ys) / min(ys) > 30:
                ax.set_yscale("log")  # a collapsing model's perplexity spans decades
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(X_LABEL)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # edits are counted
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
    handles = _legend(plan, labels, variants, colours)
    fig.suptitle(plan.title, fontsize=12)
    fig.legend([h for h, _ in handles], [name for _, name in handles], loc="outside lower center",
               ncols=min(5, len(handles)), fontsize=9, frameon=False)
    fig.savefig(path, dpi=100, format="png")
    return {"name": plan.name, "title": plan.title, "file": f"{plan.name}.png", "panels": [
        {"title": p.title, "ylabel": p.ylabel, "lines": [
            {"run": labels[ln.run], "series": ln.series, "variant": ln.variant,
             "points": len(ln.x)} for ln in p.lines]} for p in plan.panels]}
