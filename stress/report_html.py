"""report.html: what a run looked like, a page that opens from disk with nothing to fetch.

Per cell: tasks finished per second with the faults marked, the detection-latency histogram
(kill of a child running a task → the worker noticing), the backlog and the runs under way,
the worker's loop-lag warnings, and the oracles' verdicts. Charts are drawn by matplotlib
(``pip install 'taskq[report]'``) and embedded as inline SVG; without it the page still has
every table and says how to get the charts.

Several runs (``taskq-stress report DIR1 DIR2``: taskq against a ``--worker-cmd`` Celery
run, say) share one page: cells with the same id are drawn in the same charts.
"""

from __future__ import annotations

import html
import io
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stress.errors import StressError

__all__ = ["CHARTS_HINT", "Run", "charts_available", "load_run", "render", "write_html"]

CHARTS_HINT = ("Charts need matplotlib: pip install 'taskq[report]', then rebuild this page "
               "with taskq-stress report DIR.")

_RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf")
_FAULT_COLOURS = ("#d62728", "#7f7f7f", "#bcbd22", "#e377c2", "#17becf", "#8c564b")
_MAX_FAULT_LINES = 400  # per kind and run; more are thinned evenly (the caption says so)


@dataclass
class Run:
    """One run's report.json, where it came from, and the label its charts carry."""

    label: str
    directory: Path
    data: dict[str, Any]

    @property
    def cells(self) -> list[dict[str, Any]]:
        return list(self.data.get("cells", []))


def load_run(path: Path) -> Run:
    """A report folder (or its report.json). Cells recorded without series (reports written
    before report.html existed) get them from their ledgers when those are still there."""
    from stress.run import load_report

    report = path / "report.json" if path.is_dir() else path
    if not report.exists():
        raise StressError(f"no report.json in {path}: name a folder taskq-stress run wrote")
    data = load_report(report)
    for cell in data.get("cells", []):
        if "series" not in cell:
            cell["series"] = _series_from_ledger(data, cell, report.parent)
    worker_cmd = (data.get("run") or {}).get("worker_cmd")
    label = Path(worker_cmd.split()[0]).name if worker_cmd else "taskq"
    return Run(label, report.parent, data)


def _series_from_ledger(data: dict[str, Any], cell: dict[str, Any], here: Path
                        ) -> dict[str, Any]:
    from stress.series import collect
    from stress.suites import Cell, load_suite

    directory = Path(cell.get("directory") or "")
    if not (directory / "ledger").is_dir():
        directory = here / directory.name  # the report folder was moved
    if not (directory / "ledger").is_dir():
        return {}
    try:
        suite = load_suite(data.get("suite_file") or data["suite"])
    except (StressError, KeyError):
        return {}
    return collect(directory, suite, Cell(cell["params"]),
                   is_taskq=not (data.get("run") or {}).get("worker_cmd"))


def write_html(path: Path, runs: Sequence[Run]) -> None:
    path.write_text(render(runs), encoding="utf-8")


# -- the page -----------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-top: 1px solid #ccc;
     padding-top: 1em; } h3 { font-size: 1em; margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd;
        padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .pass { color: #1a7f37; font-weight: 600; }
.fail { color: #cf222e; font-weight: 600; } .note { color: #555; font-style: italic; }
code { font-size: .92em; word-break: break-all; } svg { max-width: 100%; height: auto; }
.figures { font-size: .9em; color: #444; } .charts { display: flex; flex-wrap: wrap; gap: 1em; }
caption { text-align: left; color: #555; padding-bottom: .2em; } h2 { overflow-wrap: anywhere; }
"""


def render(runs: Sequence[Run]) -> str:
    if not runs:
        raise StressError("no run to report on")
    _unique_labels(runs)
    charts = _charts_module()
    suites = sorted({str(r.data.get("suite", "?")) for r in runs})
    title = f"taskq-stress {', '.join(suites)}" + (
        " — " + " vs ".join(r.label for r in runs) if len(runs) > 1 else "")
    out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{_e(title)}</h1>", _runs_table(runs)]
    if charts is None:
        out.append(f'<p class="note">{_e(CHARTS_HINT)}</p>')
    groups = _groups(runs)
    out.append(_cells_table(groups, compare=len(runs) > 1))
    for n, (cell_id, members) in enumerate(groups, 1):
        out.append(_cell_section(n, cell_id, members, charts, compare=len(runs) > 1))
    out.append("</body></html>\n")
    return "\n".join(out)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _unique_labels(runs: Sequence[Run]) -> None:
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.directory.name})"


def _verdict_word(passed: bool, error: Any = None) -> str:
    if error:
        return '<span class="fail">ERROR</span>'
    return '<span class="pass">pass</span>' if passed else '<span class="fail">FAIL</span>'


def _runs_table(runs: Sequence[Run]) -> str:
    rows = []
    for run in runs:
        info = run.data.get("run") or {}
        cells = run.cells
        passed = sum(bool(c.get("passed")) for c in cells)
        word = ("INTERRUPTED" if info.get("interrupted") else
                "PASSED" if cells and passed == len(cells) else "FAILED")
        css = "pass" if word == "PASSED" else "fail"
        rows.append(
            f"<tr><td>{_e(run.label)}</td><td class=\"{css}\">{word}: {passed}/{len(cells)} "
            f"cells passed</td><td>{_e(run.data.get('suite'))}</td><td>{_e(info.get('seed'))}"
            f"</td><td>{_e(info.get('duration'))} s</td><td>{_e(info.get('broker') or '')}</td>"
            f"<td><code>{_e(info.get('worker_cmd') or 'taskq worker')}</code></td>"
            f"<td>{_e(info.get('started') or '')}</td><td><code>{_e(run.directory)}</code></td>"
            "</tr>")
    return ("<table><tr><th>run</th><th>verdict</th><th>suite</th><th>seed</th>"
            "<th>duration</th><th>broker</th><th>worker</th><th>started</th><th>folder</th>"
            "</tr>" + "".join(rows) + "</table>")


def _groups(runs: Sequence[Run]) -> list[tuple[str, list[tuple[Run, dict[str, Any]]]]]:
    """Cells by id, in the first run's order, each with the runs that have it."""
    groups: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for run in runs:
        for cell in run.cells:
            groups.setdefault(str(cell.get("cell")), []).append((run, cell))
    return list(groups.items())


def _cells_table(groups: Sequence[tuple[str, Sequence[tuple[Run, dict[str, Any]]]]], *,
                 compare: bool) -> str:
    """The cells, numbered as their sections, each named by the axes that differ between
    them (the shared ones in the caption), with its verdicts and nothing-lost figures, and
    the legend saying why failed= and duplicates= can be a pass."""
    from stress.report import LEGEND, oracle_figures

    params = [dict(members[0][1].get("params") or {}) for _, members in groups]
    keys = list(dict.fromkeys(k for p in params for k in p))
    varying = [k for k in keys if len({str(p.get(k)) for p in params}) > 1]
    named = {part.partition("=")[0] for cell_id, _ in groups for part in cell_id.split(",")}
    shared = ", ".join(f"{k}={_show(params[0].get(k))}" for k in keys
                       if k not in varying and k in named)
    rows = []
    for n, ((cell_id, members), p) in enumerate(zip(groups, params, strict=True), 1):
        name = ",".join(f"{k}={_show(p[k])}" for k in varying if k in p) or cell_id
        figures = "<br>".join(
            (f"{_e(run.label)}: " if compare else "") + _e(oracle_figures(
                v.get("figures") or {}, "nothing-lost"))
            for run, cell in members for v in cell.get("verdicts") or []
            if v.get("oracle") == "nothing-lost")
        rows.append(f'<tr><td><a href="#cell-{n}">{n}</a></td><td><a href="#cell-{n}">'
                    f"{_e(name)}</a></td><td>{_marks(members)}</td>"
                    f'<td class="figures">{figures}</td></tr>')
    caption = f"<caption>every cell: {_e(shared)}</caption>" if shared else ""
    return (f'<table class="cells">{caption}<tr><th>#</th><th>cell</th><th>verdict</th>'
            "<th>nothing-lost</th></tr>" + "".join(rows)
            + f'</table><p class="note">{_e(LEGEND)}</p>')


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _marks(members: Sequence[tuple[Run, dict[str, Any]]]) -> str:
    return " ".join(
        (f"{_e(run.label)}: " if len(members) > 1 else "")
        + _verdict_word(bool(cell.get("passed")), cell.get("error"))
        for run, cell in members)


def _cell_section(n: int, cell_id: str, members: Sequence[tuple[Run, dict[str, Any]]],
                  charts: Any, *, compare: bool) -> str:
    out = [f'<h2 id="cell-{n}">{n}. {_e(cell_id)} {_marks(members)}</h2>']
    for run, cell in members:
        prefix = f"<b>{_e(run.label)}</b>: " if compare else ""
        figures = cell.get("figures") or {}
        shown = ", ".join(f"{k}={v}" for k, v in figures.items() if v is not None)
        out.append(f"<p>{prefix}seed {_e(cell.get('seed'))}, {_e(cell.get('seconds'))} s; "
                   f"<span class=\"figures\">{_e(shown)}</span><br>replay: "
                   f"<code>{_e(cell.get('replay') or '')}</code></p>")
        if cell.get("error"):
            out.append(f"<p class=\"fail\">could not run: {_e(cell['error'])}</p>")
    series = [(run.label, cell.get("series") or {}) for run, cell in members]
    if charts is not None:
        out.append(_charts_html(charts, series))
    out.append(_verdicts_table(members, compare))
    return "\n".join(out)


def _verdicts_table(members: Sequence[tuple[Run, dict[str, Any]]], compare: bool) -> str:
    head = ("<th>run</th>" if compare else "") + "<th>oracle</th><th>verdict</th>" \
        "<th>message</th><th>figures</th>"
    rows = []
    for run, cell in members:
        for v in cell.get("verdicts") or []:
            figures = ", ".join(f"{k}={x}" for k, x in (v.get("figures") or {}).items()
                                if x is not None)
            rows.append("<tr>" + (f"<td>{_e(run.label)}</td>" if compare else "")
                        + f"<td>{_e(v.get('oracle'))}</td>"
                        f"<td>{_verdict_word(bool(v.get('passed')))}</td>"
                        f"<td>{_e(v.get('message'))}</td>"
                        f"<td class=\"figures\">{_e(figures)}</td></tr>")
    if not rows:
        return '<p class="note">No oracle judged this cell.</p>'
    return f"<h3>Verdicts</h3><table><tr>{head}</tr>" + "".join(rows) + "</table>"


# -- charts -------------------------------------------------------------------------------------

def _charts_module() -> Any:
    """matplotlib, when installed (the ``report`` extra)."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        return None
    return matplotlib


def charts_available() -> bool:
    return _charts_module() is not None


def _charts_html(mpl: Any, series: Sequence[tuple[str, dict[str, Any]]]) -> str:
    drawn = [(label, s) for label, s in series if s]
    if not drawn:
        return '<p class="note">No series recorded for this cell (it did not run).</p>'
    out = ['<div class="charts">']
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": "taskq-stress",
                         "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False}):
        out.append(_figure_block("Tasks finished per second, faults marked",
                                 _timeline(drawn), _timeline_note(drawn)))
        out.append(_figure_block("Detection latency: kill of a busy child → noticed",
                                 _latency(drawn), _latency_note(drawn)))
        out.append(_figure_block("Backlog (published, not yet started) and runs under way",
                                 _levels(drawn), ""))
        lagged = [(label, s) for label, s in drawn if s.get("loop_lag")]
        note = _lag_note(drawn)
        out.append(_figure_block("The worker's loop lag", _lag(lagged) if lagged else "", note))
    out.append("</div>")
    return "\n".join(out)


def _figure_block(title: str, svg: str, note: str) -> str:
    body = svg if svg else ""
    caption = f'<p class="note">{_e(note)}</p>' if note else ""
    return f"<figure style=\"margin:0\"><h3>{_e(title)}</h3>{body}{caption}</figure>"


_counter = itertools.count(1)


def _svg(fig: Any) -> str:
    """The figure as inline SVG, its ids made unique on the page (each figure defines its
    own clip paths, and a page holds dozens of figures)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    prefix = f"f{next(_counter)}-"
    text = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}{m[1]}"', text)
    return re.sub(r'(href="#|url\(#)([^")]+)', lambda m: f"{m[1]}{prefix}{m[2]}", text)


def _new_figure(width: float = 10.5, height: float = 2.8, ncols: int = 1) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _colours(n: int) -> Iterator[str]:
    return itertools.islice(itertools.cycle(_RUN_COLOURS), n)


def _timeline(drawn: Sequence[tuple[str, dict[str, Any]]]) -> str:
    fig, (ax,) = _new_figure()
    kinds = sorted({k for _l, s in drawn for k in s.get("faults", {})})
    fault_colour = dict(zip(kinds, itertools.cycle(_FAULT_COLOURS), strict=False))
    styles = ("-", "--", ":", "-.")
    for (label, s), colour, style in zip(drawn, _colours(len(drawn)),
                                         itertools.cycle(styles), strict=False):
        name = f"{label}: " if len(drawn) > 1 else ""
        for kind, times in sorted(s.get("faults", {}).items()):
            shown = _thin(times)
            ax.vlines(shown, 0, 1, transform=ax.get_xaxis_transform(), colors=fault_colour[kind],
                      linewidth=0.6, alpha=0.45, linestyles=style,
                      label=f"{name}{kind} ({len(times)})")
        span = float(s.get("seconds", len(s.get("finished", []))))
        edges, rates = _rates(s.get("finished", []), span)
        ax.stairs(rates, edges, color=colour, linewidth=1.6, label=f"{name}finished/s")
        failed = s.get("failed", [])
        if any(failed):
            edges, rates = _rates(failed, span)
            ax.stairs(rates, edges, color=colour, linewidth=1.0, linestyle="--",
                      label=f"{name}failed by the worker/s")
    return _task_counts_over_time(fig, ax, "tasks per second")


def _task_counts_over_time(fig: Any, ax: Any, ylabel: str) -> str:
    """The SVG of a chart of task counts against the run's seconds, its legend outside."""
    ax.set_xlabel("seconds from the first published task")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    _integer_ticks(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return _svg(fig)


def _rates(counts: Sequence[int], span: float) -> tuple[list[float], list[float]]:
    """Bucket edges and tasks per second; the last bucket is only as wide as the run."""
    edges = [float(i) for i in range(len(counts) + 1)]
    rates = [float(c) for c in counts]
    if counts and 0.0 < span - (len(counts) - 1) < 1.0:
        edges[-1] = span
        rates[-1] = counts[-1] / max(0.25, span - (len(counts) - 1))
    return edges, rates


def _integer_ticks(ax: Any, axis: str = "y") -> None:
    from matplotlib.ticker import MaxNLocator

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_locator(MaxNLocator(integer=True))


def _thin(times: Sequence[float]) -> list[float]:
    if len(times) <= _MAX_FAULT_LINES:
        return list(times)
    every = len(times) / _MAX_FAULT_LINES
    return [times[int(i * every)] for i in range(_MAX_FAULT_LINES)]


def _timeline_note(drawn: Sequence[tuple[str, dict[str, Any]]]) -> str:
    notes = []
    for label, s in drawn:
        faults = s.get("faults", {})
        counts = ", ".join(f"{len(t)} {k}" for k, t in sorted(faults.items()))
        thinned = any(len(t) > _MAX_FAULT_LINES for t in faults.values())
        prefix = f"{label}: " if len(drawn) > 1 else ""
        notes.append(prefix + (f"faults: {counts}" if counts else "no fault took effect")
                     + (f" (lines thinned to {_MAX_FAULT_LINES} a kind)" if thinned else ""))
    return "; ".join(notes) + ". A vertical line is one fault; the buckets are one second."


def _latency(drawn: Sequence[tuple[str, dict[str, Any]]]) -> str:
    values = [v for _l, s in drawn for v in s.get("latencies_ms", [])]
    if not values:
        return ""
    fig, axes = _new_figure(width=max(5.0, 4.2 * len(drawn)), height=2.8, ncols=len(drawn))
    top, low = max(values), max(min(values), 0.01)
    # one bin scale for every run; logarithmic when an outlier would squash the rest
    logarithmic = top / low > 20
    bins: Any = ([low * (top / low) ** (i / 30) for i in range(31)] if logarithmic
                 else [top * i / 30 for i in range(31)] if top > 0 else 30)
    for ax, (label, s), colour in zip(axes, drawn, _colours(len(drawn)), strict=False):
        latencies = s.get("latencies_ms", [])
        ax.hist(latencies, bins=bins, color=colour, alpha=0.85)
        ax.set_title(f"{label}: {len(latencies)} detections" if len(drawn) > 1
                     else f"{len(latencies)} detections", fontsize=9)
        ax.set_xlabel("milliseconds" + (" (log scale)" if logarithmic else ""))
        if logarithmic:
            ax.set_xscale("log")
        ax.set_ylabel("kills")
        _integer_ticks(ax)
        if latencies:
            ax.axvline(_median(latencies), color="black", linewidth=0.8, linestyle="--")
    if len(drawn) > 1:
        low, high = zip(*(ax.get_ylim() for ax in axes), strict=True)
        for ax in axes:
            ax.set_ylim(min(low), max(high))
    return _svg(fig)


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _latency_note(drawn: Sequence[tuple[str, dict[str, Any]]]) -> str:
    notes = []
    for label, s in drawn:
        values = sorted(s.get("latencies_ms", []))
        prefix = f"{label}: " if len(drawn) > 1 else ""
        if not values:
            notes.append(prefix + "no child was killed while it ran a task")
            continue
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
        notes.append(f"{prefix}p50 {_median(values):.1f} ms, p99 {p99:.1f} ms, "
                     f"max {values[-1]:.1f} ms")
    return "; ".join(notes) + ". The dashed line is the median."


def _levels(drawn: Sequence[tuple[str, dict[str, Any]]]) -> str:
    fig, (ax,) = _new_figure(height=2.4)
    for (label, s), colour in zip(drawn, _colours(len(drawn)), strict=False):
        step = float(s.get("step", 1.0))
        name = f"{label}: " if len(drawn) > 1 else ""
        for key, style, what in (("waiting", "-", "waiting"), ("running", ":", "running")):
            values = s.get(key, [])
            ax.stairs(values, [i * step for i in range(len(values) + 1)], color=colour,
                      linestyle=style, linewidth=1.3, label=f"{name}{what}")
    return _task_counts_over_time(fig, ax, "tasks (highest in each step)")


def _lag(drawn: Sequence[tuple[str, dict[str, Any]]]) -> str:
    fig, (ax,) = _new_figure(height=2.2)
    for (label, s), colour in zip(drawn, _colours(len(drawn)), strict=False):
        points = s.get("loop_lag") or []
        ax.scatter([p[0] for p in points], [p[1] for p in points], color=colour, s=14,
                   label=label)
    ax.set_xlabel("seconds from the first published task")
    ax.set_ylabel("lag (s)")
    ax.set_ylim(bottom=0)
    if len(drawn) > 1:
        ax.legend(fontsize=8, frameon=False)
    return _svg(fig)


def _lag_note(drawn: Sequence[tuple[str, dict[str, Any]]]) -> str:
    notes = []
    for label, s in drawn:
        prefix = f"{label}: " if len(drawn) > 1 else ""
        lag = s.get("loop_lag")
        if lag is None:
            notes.append(prefix + "not recorded (only taskq's worker logs its loop lag)")
        elif not lag:
            notes.append(prefix + "no lag over 0.5 s: taskq's worker warns only above that, "
                         "and no finer figure is recorded")
        else:
            notes.append(prefix + f"{len(lag)} warning(s), worst {max(p[1] for p in lag):.2f} s "
                         "(the worker warns over 0.5 s)")
    return "; ".join(notes) + "."
