"""`make_figures`: results dirs in, one atomic output dir of figures, tables and a spot-check gallery out.

Reads summary.json / samples.jsonl only; never imports torch or loads a model.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from vlmslim.errors import FiguresError, OutputExistsError
from vlmslim.io import atomic_dir
from vlmslim.figures.analysis import compute_frontier, figure_metrics, frontier_json, quality_metrics, summary_markdown
from vlmslim.figures.bars import bar_figure
from vlmslim.figures.combined import combined_figure
from vlmslim.figures.plots import frontier_figure, save_figure
from vlmslim.figures.runs import Run, check_compatible, choose_baseline, load_runs
from vlmslim.figures.spotcheck import select_samples, spotcheck_html, write_spotcheck_md
from vlmslim.figures.style import COST_AXES, TASK_DEFAULT_METRIC

logger = logging.getLogger(__name__)


@dataclass
class FiguresConfig:
    metric: Optional[str] = None  # None: the task's default (TASK_DEFAULT_METRIC)
    costs: tuple[str, ...] = tuple(COST_AXES)
    allow_mixed: bool = False
    baseline: Optional[str] = None  # run name or results dir
    spotcheck: int = 8  # samples in the gallery; 0 disables it
    seed: int = 0
    overwrite: bool = False
    note: Optional[str] = None  # appended to every subtitle, e.g. "fabricated example"

    def __post_init__(self):
        self.costs = tuple(COST_AXES) if "all" in self.costs else tuple(dict.fromkeys(self.costs))
        unknown = [c for c in self.costs if c not in COST_AXES]
        if unknown or not self.costs:
            raise ValueError(f"cost: unknown axis {unknown}; choose from {', '.join(COST_AXES)} or 'all'")
        if self.spotcheck < 0:
            raise ValueError(f"spotcheck: must be ≥ 0, got {self.spotcheck}")


@dataclass
class FiguresResult:
    out_dir: Path
    files: list[Path]
    metric: str
    baseline: str
    frontier: dict = field(default_factory=dict)  # the frontier.json content


def resolve_metric(runs: Sequence[Run], baseline: Run, requested: Optional[str]) -> str:
    """The plotted metric; runs lacking it are left out of metric plots (warning), absent everywhere = error."""
    available = quality_metrics(runs)
    if not available:
        raise FiguresError("no run has any quality metric in summary.json's 'metrics'")
    metric = requested
    if metric is None:
        default = TASK_DEFAULT_METRIC.get(baseline.task)
        metric = default if default in available else available[0]
        logger.info("plotting %s (pass --metric to choose another of: %s)", metric, ", ".join(available))
    if not any(metric in r.metrics for r in runs):
        raise FiguresError(f"metric {metric!r} is in none of the runs; available: {', '.join(available)}")
    lacking = [r.name for r in runs if metric not in r.metrics]
    if lacking:
        logger.warning("%s is missing from %s; they are left out of the %s plots", metric, ", ".join(lacking), metric)
    return metric


def context_line(runs: Sequence[Run], baseline: Run, note: Optional[str] = None, mixed: Sequence[str] = ()) -> str:
    """'caption · coco-val2017 · n=500 · NVIDIA H100 · baseline: llava-1.5-7b' (mixed values joined by '/',
    the differing protocol keys named: 'mixed protocol: batch_size')."""

    def values(get):
        return "/".join(dict.fromkeys(str(get(r)) for r in runs))

    parts = [values(lambda r: r.task), values(lambda r: r.dataset_name), f"n={values(lambda r: r.n_samples)}",
             values(lambda r: r.device), f"baseline: {baseline.name}"]
    parts += [f"mixed protocol: {', '.join(mixed)}"] if mixed else []
    return " · ".join(parts + ([note] if note else []))


def _check_out(out: Path, runs: Sequence[Run], overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise FiguresError(f"{out} exists and is not a directory")
    resolved = out.resolve()
    for run in runs:
        run_dir = run.dir.resolve()
        if resolved == run_dir or resolved in run_dir.parents:
            raise FiguresError(f"--out {out} would replace the results dir {run.dir}; choose another output path")


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def make_figures(run_dirs: Sequence[str | Path], out: str | Path, config: Optional[FiguresConfig] = None) -> FiguresResult:
    """Write frontier / bar / combined figures (PNG + SVG), summary.md, frontier.json and the spot check."""
    config = config or FiguresConfig()
    out = Path(out)
    runs = load_runs(run_dirs)
    mixed = check_compatible(runs, allow_mixed=config.allow_mixed)
    baseline = choose_baseline(runs, config.baseline)
    metric = resolve_metric(runs, baseline, config.metric)
    _check_out(out, runs, config.overwrite)
    logger.info("figures for %d runs, baseline %s, metric %s, config %s", len(runs), baseline.name, metric, asdict(config))
    context = context_line(runs, baseline, config.note, list(mixed))

    files: list[Path] = []
    with atomic_dir(out, config.overwrite) as partial:  # never leaves a half-written output behind
        frontiers, skipped = {}, {}
        for axis_name in config.costs:
            af = compute_frontier(runs, metric, axis_name, baseline)
            if af is None:
                skipped[axis_name] = f"no run has both {metric} and {COST_AXES[axis_name].key}"
                continue
            frontiers[axis_name] = af
            files += save_figure(frontier_figure(af, metric, context), partial, f"frontier_{axis_name}")
        metrics = figure_metrics(runs)
        for m in metrics:
            files += save_figure(bar_figure(runs, m, baseline, context), partial, f"bars_{_stem(m)}")
        combined = combined_figure(list(frontiers.values()), runs, metrics, baseline, metric, context)
        if combined is not None:
            files += save_figure(combined, partial, "combined")

        (partial / "summary.md").write_text(summary_markdown(runs, metric, baseline, frontiers, context))
        frontier = frontier_json(frontiers, skipped, runs, metric, baseline)
        frontier["config"] = asdict(config) | {"results_dirs": [str(r.dir) for r in runs]}
        (partial / "frontier.json").write_text(json.dumps(frontier, indent=2) + "\n")
        files += [partial / "summary.md", partial / "frontier.json"]

        samples = select_samples(runs, baseline, metric, config.spotcheck, config.seed)
        if samples:
            (partial / "spotcheck.html").write_text(spotcheck_html(samples, metric, context, config.seed))
            files += [partial / "spotcheck.html", write_spotcheck_md(samples, partial, metric, context, config.seed)]
    return FiguresResult(out, [out / f.relative_to(partial) for f in files], metric, baseline.name, frontier)
