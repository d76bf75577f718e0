"""The combined figure: every frontier panel plus a change-vs-baseline heatmap, one shared legend."""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from vlmslim.figures.analysis import AxisFrontier, relative_change
from vlmslim.figures.plots import RC, bold_sections, draw_frontier, finish_frontier, legend_handles, new_figure
from vlmslim.figures.runs import Run
from vlmslim.figures.style import combined_figsize, combined_grid, metric_label


def draw_change_heatmap(ax, runs: Sequence[Run], metrics: Sequence[str], baseline: Run, metric: str) -> None:
    """Rows: non-baseline runs, best `metric` first; columns: quality metrics; cells: % change vs
    baseline (red = worse)."""
    rows = sorted((r for r in runs if r is not baseline), key=lambda r: -r.metrics.get(metric, float("-inf")))
    grid = np.full((len(rows), len(metrics)), np.nan)
    for i, run in enumerate(rows):
        for j, m in enumerate(metrics):
            change = relative_change(run.metrics.get(m), baseline.metrics.get(m))
            if change is not None:
                grid[i, j] = change
    limit = max(1.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0)
    ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(metrics)):
            value = grid[i, j]
            text, color = ("–", "0.4") if np.isnan(value) else (f"{value:+.1f}", "white" if abs(value) > 0.6 * limit else "black")
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color=color)
    ax.set_xticks(range(len(metrics)), [metric_label(m) for m in metrics], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=8)
    ax.set_title(f"Change vs baseline {baseline.label} (%)", fontsize=10)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def combined_figure(frontiers: Sequence[AxisFrontier], runs: Sequence[Run], metrics: Sequence[str], baseline: Run,
                    metric: str, context: str) -> Optional[Figure]:
    """Every frontier panel plus the change-vs-baseline heatmap, one shared legend."""
    with_heatmap = len(runs) > 1 and bool(metrics)
    n_panels = len(frontiers) + int(with_heatmap)
    if n_panels == 0:
        return None
    rows, cols = combined_grid(n_panels)
    with matplotlib.rc_context(RC):
        fig = new_figure(combined_figsize(n_panels))
        axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
        for ax, af in zip(axes, frontiers):
            draw_frontier(ax, af, metric)
            ax.set_title(f"vs {af.axis.label}", fontsize=10)
        if with_heatmap:
            draw_change_heatmap(axes[-1], runs, metrics, baseline, metric)
        points = [p for af in frontiers for p in af.points]
        if points and rows * cols > n_panels:  # a free grid cell: the legend goes there, as a column
            spare = fig.add_subplot(rows, cols, n_panels + 1)
            spare.axis("off")
            bold_sections(spare.legend(*legend_handles(points), loc="center left", frameon=False, fontsize=9))
        elif points:  # a column on the right: a one-row legend would be wider than small figures
            bold_sections(fig.legend(*legend_handles(points), loc="outside right center", frameon=False, fontsize=9))
        what = "efficiency frontiers" + (" and change vs baseline" if with_heatmap else "")
        fig.suptitle(f"{metric_label(metric)}: {what}\n{context}", fontsize=11)
        fig.canvas.draw()
        fig.set_layout_engine("none")
        for ax, af in zip(axes, frontiers):
            finish_frontier(ax, af, fontsize=7)
    return fig
