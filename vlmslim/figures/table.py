"""`vlmslim table`: results dirs in, one comparison table out (markdown, CSV or LaTeX).

One row per run: quality metrics with their bootstrap CIs, deltas vs the baseline with the paired CIs that
`vlmslim bench --baseline` recorded (summary.json `paired_vs_baseline`), efficiency columns with units.
Runs whose protocols differ are refused like in `vlmslim figures` (`--allow-mixed` tags them instead).
Reads summary.json only.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from vlmslim.errors import FiguresError
from vlmslim.figures.runs import Run, check_compatible, choose_baseline, load_runs
from vlmslim.figures.style import metric_label

logger = logging.getLogger(__name__)

FORMATS = ("md", "csv", "latex")
# Quality columns shown by default per task (each followed by its delta where noted in DEFAULT_DELTAS).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "caption": ("cider", "cider_delta", "bleu4", "caption_len_mean"),
    "vqa": ("vqa_accuracy", "vqa_accuracy_delta"),
    "open-vqa": ("rouge_l", "rouge_l_delta", "meteor", "bertscore_f1"),
}
DEFAULT_EFFICIENCY = ("params", "size", "latency", "ttft", "decode", "throughput", "vram", "energy")
DEFAULT_TEXT = ("name", "pruning", "precision")


@dataclass(frozen=True)
class Column:
    """A table column: `header` (with unit) for md/latex, `csv` name(s) for the CSV, and the cell value."""

    header: str
    csv: str
    value: Callable[[Run], object]  # number, text, or None (absent)
    spec: str = ".3f"  # number format in md/latex
    ci: Optional[Callable[[Run], Optional[tuple[float, float]]]] = None  # (lo, hi) shown as "[lo, hi]"


def _eff(key: str, scale: float = 1.0) -> Callable[[Run], Optional[float]]:
    return lambda run: None if run.efficiency.get(key) is None else run.efficiency[key] * scale


TEXT_COLUMNS: dict[str, Column] = {
    "name": Column("variant", "name", lambda r: r.label),
    "pruning": Column("pruning", "pruning", lambda r: r.pruning_text),
    "precision": Column("precision", "precision", lambda r: r.precision),
    "n": Column("n", "n_samples", lambda r: r.n_samples, "d"),
}
EFFICIENCY_COLUMNS: dict[str, Column] = {
    "params": Column("params (M)", "params_m", _eff("params", 1e-6), ".2f"),
    "size": Column("size (MB)", "model_size_mb", _eff("model_size_mb"), ".2f"),
    "disk": Column("disk (MB)", "disk_mb", _eff("disk_mb"), ".2f"),
    "latency": Column("latency p50 (s)", "latency_s_p50", _eff("latency_s_p50")),
    "latency_p90": Column("latency p90 (s)", "latency_s_p90", _eff("latency_s_p90")),
    "ttft": Column("TTFT p50 (s)", "ttft_s_p50", _eff("ttft_s_p50")),
    "decode": Column("decode (ms/token)", "decode_ms_per_token", _eff("decode_ms_per_token"), ".2f"),
    "throughput": Column("throughput (img/s)", "throughput_images_per_s", _eff("throughput_images_per_s"), ".2f"),
    "tokens_per_s": Column("tokens/s", "tokens_per_s", _eff("tokens_per_s"), ".1f"),
    "vram": Column("peak VRAM (MB)", "peak_vram_mb", _eff("peak_vram_mb"), ".0f"),
    "energy": Column("energy (mWh/sample)", "energy_mwh_per_sample", _eff("energy_wh_per_sample", 1e3), ".3g"),
}


@dataclass
class TableConfig:
    columns: Optional[tuple[str, ...]] = None  # None: name, pruning, precision, the task's metrics, efficiency
    sort: Optional[str] = None  # a column key; "-key" sorts descending; None keeps the given order
    format: str = "md"
    baseline: Optional[str] = None  # run name or results dir (default as in figures: is_baseline, ...)
    allow_mixed: bool = False

    def __post_init__(self):
        if isinstance(self.columns, str):
            self.columns = tuple(c.strip() for c in self.columns.split(",") if c.strip())
        elif self.columns is not None:
            self.columns = tuple(str(c) for c in self.columns)
        if self.columns is not None and not self.columns:
            raise ValueError("columns (--columns) must name at least one column")
        if self.format not in FORMATS:
            raise ValueError(f"format (--format) must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.sort is not None and not isinstance(self.sort, str):
            raise ValueError(f"sort (--sort) must be a column key, got {self.sort!r}")


@dataclass
class Table:
    columns: list[tuple[str, Column]]  # (key, column)
    runs: list[Run]
    baseline: Optional[Run]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- columns


def _paired(run: Run, baseline: Optional[Run]) -> Optional[dict]:
    """The run's paired differences when they were taken against `baseline`'s results dir."""
    paired = run.summary.get("paired_vs_baseline") or {}
    if baseline is None or not paired.get("differences"):
        return None
    if Path(str(paired.get("baseline"))).resolve() != baseline.dir.resolve():
        return None
    return paired["differences"]


def metric_column(key: str, baseline: Optional[Run]) -> Column:
    if key.endswith("_delta"):
        metric = key.removesuffix("_delta")

        def diff(run: Run):
            if baseline is not None and run is baseline:
                return "baseline"
            d = (_paired(run, baseline) or {}).get(metric)
            return None if d is None else d["diff"]

        def ci(run: Run):
            d = (_paired(run, baseline) or {}).get(metric)
            return None if d is None or d.get("lo") is None else (d["lo"], d["hi"])

        name = baseline.name if baseline is not None else "baseline"
        return Column(f"Δ {metric_label(metric)} vs {name} [paired 95% CI]", f"{metric}_delta", diff, "+.3f", ci)
    return Column(f"{metric_label(key)} [95% CI]" if key != "caption_len_mean" else "words", key,
                  lambda run: run.metrics.get(key), ".3f" if key != "caption_len_mean" else ".1f",
                  (lambda run: run.ci.get(key)) if key != "caption_len_mean" else None)


def _known_metrics(runs: Sequence[Run]) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        for key in run.metrics:
            seen.setdefault(key, None)
    return list(seen)


def resolve_columns(keys: Optional[Sequence[str]], runs: Sequence[Run], baseline: Optional[Run]) -> list[tuple[str, Column]]:
    """Column keys -> columns. Defaults drop columns no run has a value for (VRAM on CPU, energy off)."""
    metrics = _known_metrics(runs)
    explicit = keys is not None
    if keys is None:
        tasks = dict.fromkeys(r.task for r in runs)
        quality = [k for t in tasks for k in TASK_METRICS.get(t, ())]
        keys = [*DEFAULT_TEXT, *dict.fromkeys(quality), *DEFAULT_EFFICIENCY]
    out = []
    for key in keys:
        if key in TEXT_COLUMNS:
            column = TEXT_COLUMNS[key]
        elif key in EFFICIENCY_COLUMNS:
            column = EFFICIENCY_COLUMNS[key]
        elif key in metrics or key.removesuffix("_delta") in metrics:
            column = metric_column(key, baseline)
        elif explicit:
            known = [*TEXT_COLUMNS, *EFFICIENCY_COLUMNS, *metrics, *(f"{m}_delta" for m in metrics)]
            raise FiguresError(f"unknown column {key!r}; known: {', '.join(known)}")
        else:
            continue
        if not explicit and all(column.value(r) in (None, "baseline") for r in runs):
            continue
        out.append((key, column))
    return out


# ---------------------------------------------------------------- building


def build_table(run_dirs: Sequence[str | Path], config: Optional[TableConfig] = None) -> Table:
    config = config or TableConfig()
    runs = load_runs(run_dirs)
    mixed = check_compatible(runs, allow_mixed=config.allow_mixed)
    try:
        baseline = choose_baseline(runs, config.baseline)
    except FiguresError as e:
        if config.baseline is not None:
            raise
        logger.warning("no deltas: %s", e)
        baseline = None
    columns = resolve_columns(config.columns, runs, baseline)
    notes = []
    if mixed:
        columns.insert(1, ("protocol", Column("protocol", "protocol", lambda r: r.tag)))
        notes.append("runs differ in " + ", ".join(mixed) + " (--allow-mixed): their numbers are not comparable")
    if baseline is not None:
        others = [r.name for r in runs if r is not baseline and _paired(r, baseline) is None]
        if others and any(k.endswith("_delta") for k, _ in columns):
            notes.append(f"no paired differences vs {baseline.name} recorded for {', '.join(others)} "
                         f"(bench them with --baseline {baseline.dir})")
    if config.sort is not None:
        runs = _sorted(runs, config.sort, columns, baseline)
    return Table(columns, list(runs), baseline, notes)


def _sorted(runs: list[Run], sort: str, columns, baseline) -> list[Run]:
    key = sort.removeprefix("-")
    found = dict(columns).get(key)
    if found is None:
        try:
            found = resolve_columns([key], runs, baseline)[0][1]
        except FiguresError as e:
            raise FiguresError(f"--sort {sort}: {e}") from e

    def sort_key(run: Run):
        value = found.value(run)
        if value is None or value == "baseline":  # absent values last, either direction
            return (1, 0.0, "")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (0, -value if sort.startswith("-") else value, "")
        return (0, 0.0, str(value))

    return sorted(runs, key=sort_key)


# ---------------------------------------------------------------- rendering


def _cell(column: Column, run: Run) -> str:
    value = column.value(run)
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    text = format(value, column.spec)
    ci = column.ci(run) if column.ci else None
    if ci is not None:
        spec = column.spec.lstrip("+")
        text += f" [{format(ci[0], spec)}, {format(ci[1], spec)}]"
    return text


def _md_escape(text: str) -> str:
    for ch in "\\|*_`":
        text = text.replace(ch, "\\" + ch)
    return text


def _is_text(key: str) -> bool:
    return key in TEXT_COLUMNS or key == "protocol"


def render_md(table: Table) -> str:
    header = [c.header for _, c in table.columns]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join("---" if _is_text(k) else "---:" for k, _ in table.columns) + "|"]
    for run in table.runs:
        lines.append("| " + " | ".join(_md_escape(_cell(c, run)) for _, c in table.columns) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in table.notes]).rstrip() + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "Δ": r"$\Delta$",
                  "–": "--"}


def _latex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(table: Table) -> str:
    align = "".join("l" if _is_text(k) else "r" for k, _ in table.columns)
    lines = [f"\\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(_latex(c.header) for _, c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex(_cell(c, run)) for _, c in table.columns) + r" \\" for run in table.runs]
    lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    """Numbers stay numbers: a value with a CI becomes three columns (`x`, `x_ci_lo`, `x_ci_hi`)."""
    header, rows = [], [[] for _ in table.runs]
    for _, column in table.columns:
        header.append(column.csv)
        with_ci = column.ci is not None
        if with_ci:
            header += [f"{column.csv}_ci_lo", f"{column.csv}_ci_hi"]
        for row, run in zip(rows, table.runs):
            value = column.value(run)
            row.append("" if value is None or value == "baseline" else value)
            if with_ci:
                ci = column.ci(run)
                row += ["", ""] if ci is None else list(ci)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


RENDERERS = {"md": render_md, "csv": render_csv, "latex": render_latex}


def comparison_table(run_dirs: Sequence[str | Path], config: Optional[TableConfig] = None) -> str:
    """The table of `run_dirs` as text in `config.format`."""
    config = config or TableConfig()
    return RENDERERS[config.format](build_table(run_dirs, config))
