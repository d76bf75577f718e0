"""Figures step: Pareto frontiers, bars vs baseline and spot-check galleries from results dirs.

Reads `summary.json` / `samples.jsonl` only; never loads a model or imports torch.
"""

from vlmslim.figures.frontier import frontier_order, pareto_front
from vlmslim.figures.make import FiguresConfig, FiguresResult, make_figures
from vlmslim.figures.runs import Run, choose_baseline, load_run, load_runs
from vlmslim.figures.style import COST_AXES, CostAxis

__all__ = [
    "COST_AXES",
    "CostAxis",
    "FiguresConfig",
    "FiguresResult",
    "Run",
    "choose_baseline",
    "frontier_order",
    "load_run",
    "load_runs",
    "make_figures",
    "pareto_front",
]
