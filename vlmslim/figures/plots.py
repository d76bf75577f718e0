"""Matplotlib building blocks and the frontier scatter per cost axis (bars.py and combined.py reuse them).

Figures are built with `matplotlib.figure.Figure` + the Agg canvas (no pyplot global state, no display
needed). Layout is computed once by the constrained engine and then frozen, so that label placement in
pixels stays valid and the saved PNG is exactly figsize × dpi (no `bbox_inches="tight"`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from vlmslim.figures.analysis import AxisFrontier, PlotPoint
from vlmslim.figures.labels import place_labels
from vlmslim.figures.style import (
    DPI,
    FRONTIER_FIGSIZE,
    PRECISION_COLORS,
    PRUNING_LABELS,
    PRUNING_MARKERS,
    RECOVERY_COLOR,
    metric_label,
    precision_color,
    pruning_marker,
)

logger = logging.getLogger(__name__)

FRONT_LINE = dict(color="#333333", lw=1.4, zorder=1)
RECOVERY_ARROW = dict(arrowstyle="-|>", color=RECOVERY_COLOR, lw=1.0, mutation_scale=8)
RC = {"svg.hashsalt": "vlmslim", "font.size": 9}  # fixed salt: SVG ids are reproducible across runs


def new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """PNG at DPI and SVG; metadata dates dropped so reruns give identical files."""
    paths = []
    with matplotlib.rc_context(RC):
        for ext, metadata in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
            path = out_dir / f"{stem}.{ext}"
            fig.savefig(path, dpi=DPI, format=ext, metadata=metadata)
            paths.append(path)
    return paths


def fmt_value(value: float) -> str:
    """Same number of decimals for every bar of a metric range (0.981, 1.102, 12.3, 845)."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def wrap_context(context: str, max_chars: int) -> str:
    """Break the ' · '-separated context line so it never runs past the axes (or under the legend)."""
    lines, current = [], ""
    for part in context.split(" · "):
        candidate = f"{current} · {part}" if current else part
        if current and len(candidate) > max_chars:
            lines.append(current)
            candidate = part
        current = candidate
    return "\n".join(lines + [current])


def _axis_label(af: AxisFrontier) -> str:
    """'Size on disk (MB, log scale)  ← better' from the title 'Size on disk (MB)'."""
    title = af.title[:-1] + ", log scale)" if af.axis.log and af.title.endswith(")") else af.title
    return f"{title}  ← better"


def _plain(value: float, _pos=None) -> str:
    """Tick text without scientific notation: '15,000', '0.6', '0.055' (4 significant digits)."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == 0:
        return "0"
    return np.format_float_positional(value, precision=4, unique=True, fractional=False, trim="-")


def _thousands(value: float, _pos=None) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:g}"


def draw_frontier(ax, af: AxisFrontier, metric: str) -> None:
    """Scatter + CI bars + frontier step line + baseline star. Labels come later (`label_points`)."""
    for p in af.points:
        color, alpha = precision_color(p.precision), 1.0 if p.on_front or p.is_baseline else 0.55
        if p.ci is not None:
            # CIs may not bracket the point estimate exactly (bootstrap); clamp so matplotlib accepts them.
            yerr = [[max(p.quality - p.ci[0], 0.0)], [max(p.ci[1] - p.quality, 0.0)]]
            ax.errorbar([p.cost], [p.quality], yerr=yerr, fmt="none", ecolor=color, elinewidth=1.0, capsize=2.5, alpha=alpha, zorder=2)
        if p.is_baseline:
            ax.scatter([p.cost], [p.quality], marker="*", s=260, color=color, edgecolors="black", linewidths=0.9, zorder=5)
        else:
            edge = "black" if p.on_front else "white"
            ax.scatter([p.cost], [p.quality], marker=pruning_marker(p.method), s=58, color=color, alpha=alpha,
                       edgecolors=edge, linewidths=0.8, zorder=4)
    front = af.front
    ax.step([p.cost for p in front], [p.quality for p in front], where="post", **FRONT_LINE)
    base = next((p for p in af.points if p.is_baseline), None)
    if base is not None:
        ax.axhline(base.quality, color="0.55", lw=0.8, ls=":", zorder=0)
    if af.axis.log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.margins(x=0.14, y=0.16)
    costs = {p.cost for p in af.points}
    if len(costs) == 1:  # one distinct cost: autoscale would span a decade (log) or ±cost (linear)
        c = costs.pop()
        ax.set_xlim(*((c / 1.5, c * 1.5) if af.axis.log else (c * 0.7, c * 1.3)))
    ax.set_xlabel(_axis_label(af))
    ci_note = ", 95% CI" if any(p.ci is not None for p in af.points) else ""
    ax.set_ylabel(f"{metric_label(metric)}{ci_note}  ↑ better")
    ax.grid(True, which="major", color="0.92", lw=0.8, zorder=-1)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def finish_frontier(ax, af: AxisFrontier, fontsize: float) -> None:
    """After the layout is frozen: extend the frontier to the right edge, shade what it dominates, label."""
    x0, x1 = ax.get_xlim()
    y0, _ = ax.get_ylim()
    front = af.front
    xs = [p.cost for p in front] + [x1]
    ys = [p.quality for p in front] + [front[-1].quality]
    ax.plot(xs[-2:], ys[-2:], ls="--", **FRONT_LINE)
    ax.fill_between(xs, ys, y0, step="post", color="0.5", alpha=0.07, lw=0, zorder=0)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, ax.get_ylim()[1])
    # The step line's corners: (c0, q0) → (c1, q0) → (c1, q1) → … → (x1, q_last).
    corners = [(xs[0], ys[0])]
    for x, y_prev, y in zip(xs[1:], ys[:-1], ys[1:]):
        corners += [(x, y_prev), (x, y)]
    draw_recovery_arrows(ax, af.points)
    label_points(ax, af.points, fontsize, polyline=corners)


def _recovery_segments(points: Sequence[PlotPoint]) -> list[tuple[PlotPoint, PlotPoint]]:
    """(pruned, recovered) point pairs on one axis (PlotPoint.recovered_from, see pairs.py)."""
    by_name = {p.name: p for p in points}
    return [(by_name[p.recovered_from], p) for p in points if p.recovered_from in by_name]


def draw_recovery_arrows(ax, points: Sequence[PlotPoint]) -> None:
    """A thin arrow from each pruned point to its recovered twin, under the markers (zorder 3 < 4) but
    over the CI bars (2): on the size axis the two share a cost and the bars would hide the arrow.
    Drawn after the layout is frozen, so that an arrow shorter than its two markers can be skipped:
    matplotlib draws an arrow shrunk past its own length as a long spike the other way."""
    px = ax.figure.dpi / 72
    for pruned, recovered in _recovery_segments(points):
        a, b = (ax.transData.transform((p.cost, p.quality)) for p in (pruned, recovered))
        shrink_a, shrink_b = _marker_radius_pt(pruned), _marker_radius_pt(recovered)
        if np.hypot(*(b - a)) < (shrink_a + shrink_b + 4) * px:
            logger.debug("no recovery arrow %s -> %s: the points touch", pruned.name, recovered.name)
            continue
        ax.annotate("", (recovered.cost, recovered.quality), xytext=(pruned.cost, pruned.quality),
                    arrowprops=dict(RECOVERY_ARROW, shrinkA=shrink_a, shrinkB=shrink_b), zorder=3,
                    gid=f"recovery:{pruned.name}->{recovered.name}")  # tests find arrows by gid


def _line_rects(ax, a: tuple[float, float], b: tuple[float, float], half_width: float = 2.5, step_px: float = 6.0) -> list:
    """A possibly diagonal segment (data coords) as short pixel rectangles along it: its bounding box
    alone would keep labels off a whole triangle of empty space."""
    pa, pb = ax.transData.transform(a), ax.transData.transform(b)
    n = max(1, int(np.hypot(*(pb - pa)) // step_px))
    ts = np.linspace(0.0, 1.0, n + 1)
    pts = [pa + t * (pb - pa) for t in ts]
    return [(min(p[0], q[0]) - half_width, min(p[1], q[1]) - half_width,
             max(p[0], q[0]) + half_width, max(p[1], q[1]) + half_width) for p, q in zip(pts[:-1], pts[1:])]


def _segment_rects(ax, polyline: Sequence[tuple[float, float]], half_width: float = 2.5) -> list:
    """Axis-parallel segments (the step line) as thin pixel rectangles."""
    pts = [ax.transData.transform(p) for p in polyline]
    return [(min(a[0], b[0]) - half_width, min(a[1], b[1]) - half_width, max(a[0], b[0]) + half_width, max(a[1], b[1]) + half_width)
            for a, b in zip(pts[:-1], pts[1:])]


def label_points(ax, points: Sequence[PlotPoint], fontsize: float, polyline: Sequence[tuple[float, float]] = ()) -> None:
    """Annotate each point with its run label where it collides with nothing (see labels.py): label
    sizes come from the renderer, markers are hard obstacles, CI bars and the frontier / baseline lines
    soft ones; a label moved away from its point, or nearer another point, gets a leader line."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    # Baseline first, then frontier points, then the rest: the important labels get the best spots.
    order = sorted(range(len(points)), key=lambda i: (not points[i].is_baseline, not points[i].on_front, points[i].cost))
    anchors = [tuple(ax.transData.transform((p.cost, p.quality))) for p in points]
    texts, sizes = [], []
    for i in order:
        p = points[i]
        text = p.label + (" (baseline)" if p.is_baseline else "")
        probe = ax.text(0, 0, text, fontsize=fontsize, fontweight="bold" if p.on_front else "normal")
        bb = probe.get_window_extent(renderer)
        probe.remove()
        texts.append(text)
        sizes.append((bb.width, bb.height))
    px = fig.dpi / 72  # the placer works in pixels; distances below are in points
    radii_pt = [_marker_radius_pt(points[i]) for i in order]
    obstacles = []
    for p, (x, _y) in zip(points, anchors):
        if p.ci is not None:  # CI bars are thin vertical rectangles labels should not cover
            lo, hi = (ax.transData.transform((p.cost, v))[1] for v in p.ci)
            obstacles.append((x - 3, lo, x + 3, hi))
    obstacles += _segment_rects(ax, polyline)
    for pruned, recovered in _recovery_segments(points):  # the pruned → recovered arrows
        obstacles += _line_rects(ax, (pruned.cost, pruned.quality), (recovered.cost, recovered.quality))
    base = next((p for p in points if p.is_baseline), None)
    if base is not None:  # the dotted baseline-quality line across the axes
        obstacles += _segment_rects(ax, [(ax.get_xlim()[0], base.quality), (ax.get_xlim()[1], base.quality)], 1.5)
    bbox = ax.get_window_extent(renderer)
    placements = place_labels(
        [anchors[i] for i in order], sizes, marker_radii=[r * px for r in radii_pt], obstacles=obstacles,
        bounds=(bbox.x0, bbox.y0, bbox.x1, bbox.y1), radii=[r * px for r in (2, 5, 9, 14, 21, 30, 42, 58)],
        gap=LABEL_GAP_PT * px, leader_px=12 * px,
    )
    to_points = 72.0 / fig.dpi
    for i, text, place, radius in zip(order, texts, placements, radii_pt):
        p = points[i]
        # The leader ends at the marker's edge, so it points at the marker without covering it.
        arrow = dict(arrowstyle="-", color="0.45", lw=0.6, shrinkA=0, shrinkB=radius) if place.leader else None
        ax.annotate(text, (p.cost, p.quality), xytext=(place.dx * to_points, place.dy * to_points),
                    textcoords="offset points", ha="left", va="bottom", fontsize=fontsize,
                    fontweight="bold" if p.on_front else "normal", color="black" if p.on_front else "0.35",
                    arrowprops=arrow, zorder=6, gid=f"label:{p.name}",  # tests find labels by gid
                    # A faint halo keeps text readable where it still crosses a grid or CI line.
                    bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none", alpha=0.75))


def annotate_points(ax, xy: Sequence[tuple[float, float]], texts: Sequence[str], fontsize: float = 7.0) -> None:
    """Label data points without collisions (same placer as the frontiers; leader lines where moved).
    For figures outside the frontier code, e.g. the GPU study's speed-vs-size panels."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    anchors = [tuple(ax.transData.transform(p)) for p in xy]
    sizes = []
    for text in texts:
        probe = ax.text(0, 0, text, fontsize=fontsize)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        sizes.append((bb.width, bb.height))
    px = fig.dpi / 72
    bbox = ax.get_window_extent(renderer)
    placements = place_labels(anchors, sizes, marker_radii=[4.5 * px] * len(xy),
                              bounds=(bbox.x0, bbox.y0, bbox.x1, bbox.y1),
                              radii=[r * px for r in (2, 5, 9, 14, 21, 30, 42, 58)], gap=LABEL_GAP_PT * px,
                              leader_px=12 * px)
    to_points = 72.0 / fig.dpi
    for p, text, place in zip(xy, texts, placements):
        arrow = dict(arrowstyle="-", color="0.45", lw=0.6, shrinkA=0, shrinkB=4.5) if place.leader else None
        ax.annotate(text, p, xytext=(place.dx * to_points, place.dy * to_points), textcoords="offset points",
                    ha="left", va="bottom", fontsize=fontsize, arrowprops=arrow, zorder=6,
                    bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none", alpha=0.75))


LABEL_GAP_PT = 2.5  # between two labels: more than a space, so two names never read as one


def _marker_radius_pt(p: PlotPoint) -> float:
    """Marker radius + a little air: sqrt(s)/2 points for scatter size s (58 → 3.8 pt, the star's 260 → 8 pt)."""
    return 8.5 if p.is_baseline else 4.5


def registry_order(values: set, registry: dict) -> list:
    return [k for k in registry if k in values] + sorted(values - set(registry))


def legend_handles(points: Sequence[PlotPoint]) -> tuple[list, list[str]]:
    """Section-titled legend: precisions (colour), pruning methods (marker), baseline, frontier."""
    handles, labels = [], []

    def section(title):
        handles.append(Line2D([], [], ls="none"))
        labels.append(title)

    section("Precision")
    # Registry order (16-bit, int8, nf4, fp4), unknown values after it.
    for prec in registry_order({p.precision for p in points}, PRECISION_COLORS):
        handles.append(Line2D([], [], ls="none", marker="o", ms=7, color=precision_color(prec)))
        labels.append(prec)
    methods = registry_order({p.method for p in points if not p.is_baseline}, PRUNING_MARKERS)
    if methods:
        section("Pruning")
    for method in methods:
        handles.append(Line2D([], [], ls="none", marker=pruning_marker(method), ms=7, color="0.45"))
        labels.append(PRUNING_LABELS.get(method, method))
    section("Marks")
    handles.append(Line2D([], [], ls="none", marker="*", ms=13, color="0.7", mec="black"))
    labels.append("baseline")
    handles.append(Line2D([], [], **FRONT_LINE))
    labels.append("Pareto frontier")
    handles.append(Line2D([], [], ls="none", marker="o", ms=7, color="0.7", mec="black"))
    labels.append("on frontier (black edge)")
    handles.append(Patch(color="0.5", alpha=0.15, lw=0))
    labels.append("dominated region")
    if _recovery_segments(points):
        handles.append(Line2D([], [], color=RECOVERY_COLOR, lw=1.0, marker=">", ms=5))
        labels.append("pruned → recovered")
    return handles, labels


def bold_sections(legend) -> None:
    for text in legend.get_texts():
        if text.get_text() in ("Precision", "Pruning", "Marks"):
            text.set_fontweight("bold")


def frontier_figure(af: AxisFrontier, metric: str, context: str) -> Figure:
    with matplotlib.rc_context(RC):
        fig = new_figure(FRONTIER_FIGSIZE)
        ax = fig.add_subplot()
        draw_frontier(ax, af, metric)
        bold_sections(fig.legend(*legend_handles(af.points), loc="outside right upper", frameon=False, fontsize=8.5))
        fig.suptitle(f"{metric_label(metric)} vs {af.axis.label}: efficiency frontier", fontweight="bold", fontsize=12)
        ax.set_title(wrap_context(context, 90), fontsize=8.5, color="0.3")
        fig.canvas.draw()
        fig.set_layout_engine("none")  # freeze: label placement below works in final pixel coordinates
        finish_frontier(ax, af, fontsize=8)
    return fig
