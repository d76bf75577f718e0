"""Per-metric bar chart: every checkpoint against the baseline, with CIs and the relative change."""

from __future__ import annotations

from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vlmslim.figures.analysis import relative_change
from vlmslim.figures.plots import RC, fmt_value, new_figure, registry_order, wrap_context
from vlmslim.figures.runs import Run
from vlmslim.figures.style import PRECISION_COLORS, bar_figsize, metric_label, precision_color


def bar_figure(runs: Sequence[Run], metric: str, baseline: Run, context: str) -> Figure:
    """Horizontal bars of one metric, baseline first (hatched) and the rest best-first, with CIs and
    the change vs baseline written at each bar's end. Runs without the metric are left out."""
    rows = [r for r in runs if metric in r.metrics]
    rows.sort(key=lambda r: (r is not baseline, -r.metrics[metric]))
    base_value = baseline.metrics.get(metric)
    with matplotlib.rc_context(RC):
        fig = new_figure(bar_figsize(len(rows)))
        ax = fig.add_subplot()
        ys = np.arange(len(rows))
        values = [r.metrics[metric] for r in rows]
        his = [r.ci[metric][1] if metric in r.ci else v for r, v in zip(rows, values)]
        for y, run, value in zip(ys, rows, values):
            is_base = run is baseline
            ax.barh(y, value, height=0.66, color=precision_color(run.precision), alpha=1.0 if is_base else 0.85,
                    edgecolor="black" if is_base else "none", linewidth=1.3, hatch="///" if is_base else None, zorder=2)
            if metric in run.ci:
                lo, hi = run.ci[metric]
                ax.errorbar(value, y, xerr=[[max(value - lo, 0.0)], [max(hi - value, 0.0)]], fmt="none", ecolor="0.15",
                            elinewidth=1.0, capsize=3, zorder=3)
        xmax = max(his + values)
        for y, run, value, hi in zip(ys, rows, values, his):
            delta = relative_change(value, base_value)
            note = fmt_value(value) + ("" if run is baseline or delta is None else f"  ({delta:+.1f}%)")
            # A white halo above the dashed baseline line (zorder 4), which would otherwise cross the digits.
            ax.text(max(value, hi) + 0.015 * xmax, y, note, va="center", fontsize=8.5,
                    fontweight="bold" if run is baseline else "normal", zorder=5,
                    bbox=dict(boxstyle="square,pad=0.15", fc="white", ec="none", alpha=0.9))
        if base_value is not None:
            ax.axvline(base_value, color="0.25", ls="--", lw=0.9, zorder=4)
        ax.set_xlim(0, xmax * 1.28)
        ax.set_yticks(ys, [r.label + (" (baseline)" if r is baseline else "") for r in rows])
        for tick, run in zip(ax.get_yticklabels(), rows):
            if run is baseline:
                tick.set_fontweight("bold")
        ax.invert_yaxis()
        ci_note = " (95% CI)" if any(metric in r.ci for r in rows) else ""
        ax.set_xlabel(f"{metric_label(metric)}{ci_note}; dashed line: baseline")
        ax.grid(True, axis="x", color="0.92", zorder=0)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        precisions = registry_order({r.precision for r in rows}, PRECISION_COLORS)
        handles = [Line2D([], [], ls="none", marker="s", ms=8, color=precision_color(p)) for p in precisions]
        fig.legend(handles, precisions, loc="outside lower center",
                   ncol=len(handles), frameon=False, fontsize=8.5, title="precision", title_fontsize=8.5)
        fig.suptitle(f"{metric_label(metric)} by checkpoint vs baseline", fontweight="bold", fontsize=12)
        ax.set_title(wrap_context(context, 100), fontsize=8.5, color="0.3")
    return fig
