"""Registries for everything the figures vary over: cost axes, metrics, precisions, pruning methods.

Adding a cost axis or a precision is one entry here; plots, tables and the CLI's `--cost` choices read
these dicts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostAxis:
    key: str  # key in summary.json's `efficiency`
    label: str
    unit: str
    log: bool  # log-scale x axis (sizes span 16-bit .. 4-bit, a 4x+ range)
    per: str = ""  # what one value is for: "per request" (a sample's latency is its batch's)
    batch_dependent: bool = False  # the value changes with --batch-size: the axis label names it
    scale: float = 1.0  # plotted value = summary value × scale (Wh → mWh: no 6e-05 tick labels)
    has_basis: bool = False  # measured or estimated is recorded (Run.energy_basis): the label says which


COST_AXES: dict[str, CostAxis] = {
    "latency": CostAxis("latency_s_p50", "Latency p50", "s", False, per="per request", batch_dependent=True),
    "vram": CostAxis("peak_vram_mb", "Peak VRAM", "MB", False, batch_dependent=True),
    "ttft": CostAxis("ttft_s_p50", "Time to first token p50", "s", False, per="per request", batch_dependent=True),
    "size": CostAxis("model_size_mb", "Size on disk", "MB", True),
    # On CPU codecarbon estimates CPU + RAM power (the RAM share dominates); on GPU it reads NVML.
    "energy": CostAxis("energy_wh_per_sample", "Energy", "mWh", False, per="per sample", batch_dependent=True,
                       scale=1000.0, has_basis=True),
}

# summary.json's efficiency.energy.basis → what figures say about it.
ENERGY_BASIS: dict[str, str] = {"cpu+ram (estimated)": "CPU estimate", "gpu (measured)": "GPU measured"}

# Human labels; a metric not listed here is shown under its key.
METRIC_LABELS: dict[str, str] = {
    "cider": "CIDEr-D",
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL_f": "ROUGE-L (rouge-score)",
    "bertscore_f1": "BERTScore F1",
    "bertscore_precision": "BERTScore P",
    "bertscore_recall": "BERTScore R",
    "vqa_accuracy": "VQA accuracy",
}

# A second implementation of another metric's score (rouge-score's ROUGE-L F next to pycocoevalcap's
# ROUGE-L): bars and the heatmap show it only when its twin is absent; tables keep both.
DUPLICATE_METRICS: dict[str, str] = {"rougeL_f": "rouge_l"}

# The metric plotted when `--metric` is not given.
TASK_DEFAULT_METRIC: dict[str, str] = {"caption": "cider", "vqa": "vqa_accuracy", "open-vqa": "rouge_l"}

# Okabe-Ito colours: distinguishable for colour-blind readers and in greyscale print.
PRECISION_COLORS: dict[str, str] = {
    "32-bit": "#56B4E9",
    "16-bit": "#0072B2",
    "int8": "#E69F00",
    "nf4": "#009E73",
    "fp4": "#D55E00",
    "int4wo": "#F0E442",  # 4-bit weight-only (quantization recipe `int4wo`)
    "int8dq": "#882255",  # int8 weights + dynamic int8 activations (`int8dq`); not #CC79A7, the recovery arrows
    "fp8wo": "#000000",  # e4m3 weight-only (`fp8`)
    "int8wo": "#999933",  # int8 weight-only (`int8wo`; Tol's olive)
}
UNKNOWN_COLOR = "#7F7F7F"

# '*' is reserved for the baseline.
PRUNING_MARKERS: dict[str, str] = {
    "none": "o",
    "glu": "s",
    "heads": "^",
    "layers": "D",
    "tokens": "v",  # fewer image tokens into the language model (vlmslim.tokens)
    "combined": "P",
    "recovered": "h",  # last step `vlmslim recover`, whatever was pruned before it
}
UNKNOWN_MARKER = "X"
# Legend text where the registry key alone would not say what it is.
PRUNING_LABELS: dict[str, str] = {"recovered": "recovered (vlmslim recover)"}
# Pruned → recovered arrows: Okabe-Ito's reddish purple, the one colour no precision or line uses.
RECOVERY_COLOR = "#CC79A7"

DPI = 150
FRONTIER_FIGSIZE = (9.0, 5.5)
COMBINED_PANEL_SIZE = (6.0, 4.6)
LABEL_MAX_CHARS = 26


def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key)


def precision_color(precision: str) -> str:
    return PRECISION_COLORS.get(precision, UNKNOWN_COLOR)


def pruning_marker(method: str) -> str:
    return PRUNING_MARKERS.get(method, UNKNOWN_MARKER)


def is_quality_metric(key: str) -> bool:
    """Output length (mean / p90 words) sits next to CIDEr in `metrics` but is not a quality score."""
    return "len" not in key


def bar_figsize(n_runs: int) -> tuple[float, float]:
    """Horizontal bars: height grows with the number of runs so labels stay readable."""
    return (8.0, 1.6 + 0.45 * n_runs)


def combined_grid(n_panels: int) -> tuple[int, int]:
    """(rows, cols) of the combined figure."""
    cols = 2 if n_panels <= 4 else 3
    return (-(-n_panels // cols), min(cols, n_panels))


def combined_figsize(n_panels: int) -> tuple[float, float]:
    rows, cols = combined_grid(n_panels)
    w, h = COMBINED_PANEL_SIZE
    # The shared legend takes a spare grid cell if there is one, else a column on the right.
    legend_column = 2.4 if rows * cols == n_panels else 0.0
    return (w * cols + legend_column, h * rows + 1.2)  # + 1.2 in for the two-line title


def short_label(name: str, limit: int = LABEL_MAX_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
