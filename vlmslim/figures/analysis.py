"""From loaded runs to the numbers the figures show: per-axis frontiers, deltas vs baseline, and the
`frontier.json` / `summary.md` texts. No plotting here."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

from vlmslim.figures.frontier import frontier_order, pareto_front
from vlmslim.figures.pairs import recovery_pairs
from vlmslim.figures.runs import Run
from vlmslim.figures.style import COST_AXES, DUPLICATE_METRICS, CostAxis, is_quality_metric, metric_label

logger = logging.getLogger(__name__)


@dataclass
class PlotPoint:
    name: str
    label: str  # Run.label: what the figure writes next to the point
    quality: float
    cost: float
    ci: Optional[tuple[float, float]]
    precision: str
    method: str
    is_baseline: bool
    on_front: bool = False
    recovered_from: Optional[str] = None  # name of the pruned point it was distilled from (pairs.py)


@dataclass
class AxisFrontier:
    """One cost axis: every plottable run, which are on the frontier, and who was left out and why."""

    axis_name: str
    axis: CostAxis
    points: list[PlotPoint]
    excluded: dict[str, str] = field(default_factory=dict)
    title: str = ""  # axis_title(): what was measured, e.g. "Latency p50 per request, batch 8 (s)"

    @property
    def front(self) -> list[PlotPoint]:
        """Frontier points from cheapest to most expensive."""
        order = frontier_order([(p.quality, p.cost) for p in self.points])
        return [self.points[i] for i in order]


def compute_frontier(runs: Sequence[Run], metric: str, axis_name: str, baseline: Run) -> Optional[AxisFrontier]:
    """Frontier of `metric` vs one cost axis, or None (with a warning) when no run has that cost."""
    axis = COST_AXES[axis_name]
    points, excluded = [], {}
    for run in runs:
        quality, cost = run.metrics.get(metric), run.cost(axis.key)
        cost = None if cost is None else cost * axis.scale
        if quality is None:
            excluded[run.name] = f"no {metric}"
        elif cost is None:
            excluded[run.name] = f"no {axis.key}"
        elif axis.log and cost <= 0:
            excluded[run.name] = f"{axis.key} = {cost} cannot go on a log axis"
        else:
            points.append(PlotPoint(run.name, run.label, quality, cost, run.ci.get(metric), run.precision,
                                    run.pruning_method, run is baseline))
    if not points:
        if all(run.cost(axis.key) is None for run in runs):  # e.g. energy or VRAM on CPU runs
            logger.warning("skipping the %s axis: %s is missing or null in all %d runs", axis_name, axis.key, len(runs))
        else:
            logger.warning("skipping the %s axis: no run has both %s and %s (%s)", axis_name, metric, axis.key, _reasons(excluded))
        return None
    if excluded:
        logger.warning("%s axis leaves out %s", axis_name, _reasons(excluded))
    for point, flag in zip(points, pareto_front([(p.quality, p.cost) for p in points])):
        point.on_front = flag
    plotted = {p.name for p in points}
    # Pairs among this axis's points only: a pruned twin left out of the axis gets no arrow.
    pairs = recovery_pairs([r for r in runs if r.name in plotted])
    for point in points:
        point.recovered_from = pairs.get(point.name)
    return AxisFrontier(axis_name, axis, points, excluded, axis_title(axis, [r for r in runs if r.name in plotted]))


def axis_title(axis: CostAxis, runs: Sequence[Run]) -> str:
    """What one value on the axis is: 'Latency p50 per request, batch 8 (s)', 'Energy per sample, batch 8
    (mWh, CPU estimate)'; several batch sizes (only with --allow-mixed) read 'batch 1/8 (mixed)'."""
    text = f"{axis.label} {axis.per}".rstrip()
    if axis.batch_dependent:
        batches = sorted({r.batch_size for r in runs if r.batch_size is not None})
        if batches:
            text += ", batch " + "/".join(map(str, batches)) + (" (mixed)" if len(batches) > 1 else "")
    unit = axis.unit
    if axis.has_basis:
        bases = list(dict.fromkeys(r.energy_basis for r in runs if r.energy_basis))
        unit += "".join(f", {b}" for b in bases[:1]) + (f"/{'/'.join(bases[1:])} (mixed)" if len(bases) > 1 else "")
    return f"{text} ({unit})"


def _reasons(excluded: dict[str, str]) -> str:
    return ", ".join(f"{name}: {why}" for name, why in excluded.items())


def quality_metrics(runs: Sequence[Run]) -> list[str]:
    """Quality metrics present in at least one run, in first-seen order."""
    seen: dict[str, None] = {}
    for run in runs:
        for key in run.metrics:
            if is_quality_metric(key):
                seen.setdefault(key, None)
    return list(seen)


def figure_metrics(runs: Sequence[Run]) -> list[str]:
    """quality_metrics without the duplicates (DUPLICATE_METRICS) whose twin is present: one ROUGE-L."""
    metrics = quality_metrics(runs)
    return [m for m in metrics if DUPLICATE_METRICS.get(m) not in metrics]


def relative_change(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    """Percent change vs the baseline; None when either is missing or the baseline is 0."""
    if value is None or reference is None or reference == 0:
        return None
    return 100.0 * (value - reference) / abs(reference)


def frontier_json(frontiers: dict[str, AxisFrontier], skipped: dict[str, str], runs: Sequence[Run], metric: str, baseline: Run) -> dict:
    """`frontier.json`: per cost axis, the frontier runs (cheapest first) with their values, plus every point."""
    dirs = {r.name: str(r.dir) for r in runs}
    axes = {}
    for name, af in frontiers.items():
        axes[name] = {
            "cost_key": af.axis.key,
            "label": af.axis.label,
            "title": af.title,
            "unit": af.axis.unit,
            "scale": af.axis.scale,  # cost = summary.json's value × scale
            "log_scale": af.axis.log,
            "frontier": [
                {"run": p.name, "quality": p.quality, "cost": p.cost, "results_dir": dirs[p.name]} for p in af.front
            ],
            "points": [
                {"run": p.name, "quality": p.quality, "cost": p.cost, "on_frontier": p.on_front} for p in af.points
            ],
            "excluded": af.excluded,
        }
    return {
        "metric": metric,
        "metric_label": metric_label(metric),
        "higher_quality_is_better": True,
        "baseline": baseline.name,
        "tasks": sorted({r.task for r in runs}),
        "axes": axes,
        "skipped_axes": skipped,
    }


def _md(text: str) -> str:
    """Escape what would break a markdown table cell or turn into emphasis."""
    for ch in "\\|*_`":
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def _fmt(value: Optional[float]) -> str:
    """Table numbers: thousands separators for MB, 3 decimals for scores and seconds, 3 significant
    digits for small values such as Wh per sample."""
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}" if 0 < abs(value) < 0.1 else f"{value:.3f}"


def _scaled(value: Optional[float], scale: float) -> Optional[float]:
    return None if value is None else value * scale


def summary_markdown(runs: Sequence[Run], metric: str, baseline: Run, frontiers: dict[str, AxisFrontier], context: str) -> str:
    """A markdown table of every run; names of runs on any frontier in bold, with the axes they lead on."""
    metrics = quality_metrics(runs)
    on_axes = {r.name: [n for n, af in frontiers.items() if any(p.on_front and p.name == r.name for p in af.points)] for r in runs}
    header = ["Run", "Precision", "Pruning"]
    for m in metrics:
        header.append(metric_label(m) + (" (95% CI)" if m == metric else ""))
    header += [f"Δ {metric_label(metric)} vs baseline"]
    header += [axis_title(COST_AXES[a], runs) for a in COST_AXES]
    header += ["On frontier"]
    lines = [
        f"# Results: {metric_label(metric)}",
        "",
        context,
        "",
        f"Baseline: **{_md(baseline.name)}**. Bold runs are on the Pareto frontier (higher {metric_label(metric)}, "
        "lower cost) of at least one cost axis, listed in the last column.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header) - 1)) + "|---|",
    ]
    base_value = baseline.metrics.get(metric)
    for run in runs:
        name = _md(run.label) + (" (baseline)" if run is baseline else "")
        cells = [f"**{name}**" if on_axes[run.name] else name, run.precision, _md(run.pruning_text)]
        for m in metrics:
            cell = _fmt(run.metrics.get(m))
            if m == metric and m in run.ci:
                cell += f" [{_fmt(run.ci[m][0])}, {_fmt(run.ci[m][1])}]"
            cells.append(cell)
        delta = relative_change(run.metrics.get(metric), base_value)
        cells.append("baseline" if run is baseline else "–" if delta is None else f"{delta:+.1f}%")
        cells += [_fmt(_scaled(run.cost(COST_AXES[a].key), COST_AXES[a].scale)) for a in COST_AXES]
        cells.append(", ".join(on_axes[run.name]) or "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
