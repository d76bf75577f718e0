"""Read benchmark results directories (summary.json, samples.jsonl) into plain dataclasses.

Only the keys the figures need are validated; extra keys are kept in `Run.summary` and ignored, so the
benchmark step can grow its output without breaking this reader.
"""

from __future__ import annotations

import json
import logging
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from vlmslim.errors import FiguresError
from vlmslim.figures.style import ENERGY_BASIS, PRECISION_COLORS, short_label

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "task", "n_samples", "metrics", "efficiency")
REQUIRED_MODEL_KEYS = ("name", "precision")
KNOWN_PRECISIONS = tuple(PRECISION_COLORS)  # one list: what has a colour is known


@dataclass
class Run:
    """One checkpoint's benchmark results (one results dir)."""

    dir: Path
    name: str
    precision: str
    pruning: list[dict]
    is_baseline: bool
    task: str
    n_samples: int
    metrics: dict[str, float]  # missing / null metrics are left out
    ci: dict[str, tuple[float, float]]
    efficiency: dict[str, Optional[float]]
    dataset: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    data_dir: Optional[Path] = None
    summary: dict[str, Any] = field(default_factory=dict)  # the whole summary.json, extra keys included
    generation: dict[str, Any] = field(default_factory=dict)  # config.yaml's `generation` block (engine)
    tag: str = ""  # protocol values that differ from other runs' (--allow-mixed), e.g. "batch 8"

    @property
    def label(self) -> str:
        """The name shown on figures: shortened, with the differing protocol values when mixed."""
        return short_label(self.name) + (f" [{self.tag}]" if self.tag else "")

    @property
    def protocol(self) -> dict[str, Any]:
        return self.summary.get("protocol") or {}

    @property
    def batch_size(self) -> Optional[int]:
        value = self.protocol.get("batch_size", (self.summary.get("efficiency") or {}).get("batch_size"))
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def engine(self) -> Optional[str]:
        # summary.json's protocol does not record the engine (yet); config.yaml's generation block does.
        return self.protocol.get("engine") or self.generation.get("engine")

    @property
    def energy_basis(self) -> Optional[str]:
        """'CPU estimate' / 'GPU measured' (ENERGY_BASIS), the raw basis if unknown, None if not recorded."""
        energy = (self.summary.get("efficiency") or {}).get("energy")
        basis = energy.get("basis") if isinstance(energy, dict) else None
        return ENERGY_BASIS.get(basis, basis) if basis else None

    @property
    def token_reduction(self) -> Optional[dict]:
        """{"image_tokens", "method", "seed"} when the run fed fewer image tokens (vlmslim.tokens), else None."""
        return (self.summary.get("model") or {}).get("token_reduction")

    @property
    def is_recovered(self) -> bool:
        """The last step is `vlmslim recover` (distilled back toward its teacher after pruning)."""
        return bool(self.pruning) and self.pruning[-1].get("kind") == "recover"

    @property
    def pruning_method(self) -> str:
        """'none', a single method ('glu', 'heads', 'layers', 'tokens', …), 'combined' for several, or
        'recovered' when the last step is `vlmslim recover` (its own marker; the arrow from its pruned twin
        tells what was pruned)."""
        if self.is_recovered:
            return "recovered"
        kinds = sorted({m for step in self.pruning for m in _step_methods(step)} |
                       ({"tokens"} if self.token_reduction else set()))
        if not kinds:
            return "none"
        return kinds[0] if len(kinds) == 1 else "combined"

    @property
    def pruning_text(self) -> str:
        """e.g. 'glu 30% + heads 25% (maw)' for tables."""
        parts = []
        for step in self.pruning:
            params = step.get("params") or step
            if step.get("kind") == "recover":
                parts.append(f"recover ({step.get('method')})")
                continue
            texts = []
            for m in _step_methods(step):
                ours = step.get("kind") == "prune"
                ratio = params.get(m) if ours and m in ("glu", "heads") else step.get("ratio")
                key = {"layers": "drop_layers"}.get(m) if ours else "n"
                if isinstance(ratio, (int, float)):
                    texts.append(f"{m} {100 * ratio:.0f}%")
                elif key and params.get(key) is not None:
                    texts.append(f"{m} {params[key]}")
                else:
                    texts.append(m)
            text = " + ".join(texts)
            importance = params.get("importance") if "glu" in _step_methods(step) else None
            parts.append(text + (f" ({importance})" if importance else ""))
        if self.token_reduction:
            t = self.token_reduction
            parts.append(f"{t['image_tokens']} image tokens ({t['method']})")
        return " + ".join(parts) or "none"

    @property
    def device(self) -> str:
        return str(self.environment.get("device") or "unknown device")

    @property
    def dataset_sha256(self) -> Optional[str]:
        return self.dataset.get("sha256")

    @property
    def dataset_name(self) -> str:
        return str(self.dataset.get("name") or Path(str(self.dataset.get("path", "?"))).name)

    def cost(self, key: str) -> Optional[float]:
        return self.efficiency.get(key)


def finite_or_none(value: Any) -> Optional[float]:
    """A finite float, or None for null / NaN / non-numbers (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _read_summary(path: Path) -> dict:
    if not path.exists():
        raise FiguresError(f"{path} does not exist")
    if not path.is_dir():
        raise FiguresError(f"{path} is not a directory; pass results dirs written by `vlmslim bench`")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise FiguresError(f"{path} is not a results dir (no summary.json); run `vlmslim bench … --out {path}` first")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as e:
        raise FiguresError(f"{summary_path} is not valid JSON ({e}); re-run the benchmark") from e
    if not isinstance(summary, dict):
        raise FiguresError(f"{summary_path} must hold a JSON object")
    return summary


def load_run(path: str | Path) -> Run:
    """Load and validate one results dir; raise `FiguresError` naming the dir and what is missing."""
    path = Path(path)
    summary = _read_summary(path)
    missing = [k for k in REQUIRED_KEYS if k not in summary]
    model = summary.get("model")
    if isinstance(model, dict):
        missing += [f"model.{k}" for k in REQUIRED_MODEL_KEYS if k not in model]
    elif "model" not in missing:
        missing.append("model (must be an object)")
    if missing:
        raise FiguresError(f"{path / 'summary.json'} lacks {', '.join(missing)}; was it written by `vlmslim bench`?")
    for key in ("metrics", "efficiency"):
        if not isinstance(summary[key], dict):
            raise FiguresError(f"{path / 'summary.json'}: '{key}' must be an object")

    metrics = {k: v for k, v in ((k, finite_or_none(v)) for k, v in summary["metrics"].items()) if v is not None}
    ci = {}
    for key, bounds in (summary.get("ci") or {}).items():
        lo, hi = (finite_or_none(b) for b in bounds) if isinstance(bounds, (list, tuple)) and len(bounds) == 2 else (None, None)
        if lo is not None and hi is not None:
            ci[key] = (lo, hi)
    precision = str(model["precision"])
    if precision not in KNOWN_PRECISIONS:
        logger.warning("%s: unknown precision %r (known: %s); drawn in grey", path, precision, ", ".join(KNOWN_PRECISIONS))
    pruning = model.get("pruning") or []
    if not isinstance(pruning, list):
        raise FiguresError(f"{path / 'summary.json'}: model.pruning must be a list of steps")
    data_dir = summary.get("data_dir")
    generation = _read_generation(path)
    return Run(
        dir=path,
        name=str(model["name"]),
        precision=precision,
        pruning=[s if isinstance(s, dict) else {"kind": str(s)} for s in pruning],
        is_baseline=bool(model.get("is_baseline", False)),
        task=str(summary["task"]),
        n_samples=int(summary["n_samples"]),
        metrics=metrics,
        ci=ci,
        efficiency={k: finite_or_none(v) for k, v in summary["efficiency"].items()},
        dataset=summary.get("dataset") or {},
        environment=summary.get("environment") or {},
        data_dir=Path(data_dir) if data_dir else None,
        summary=summary,
        generation=generation,
    )


def _read_generation(path: Path) -> dict:
    """config.yaml's `generation` block (the bench's protocol, engine included), {} when absent/unreadable."""
    config_path = path / "config.yaml"
    if not config_path.is_file():
        return {}
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        logger.warning("%s is unreadable (%s); its engine counts as not recorded", config_path, e)
        return {}
    generation = config.get("generation") if isinstance(config, dict) else None
    return generation if isinstance(generation, dict) else {}


def results_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """The results dirs among `paths`: a shell glob such as `results/*` also matches files a bench writes
    next to them (failures.json), which are skipped; a `summary.json` path stands for its dir. A
    directory stays in, so a dir that is not a results dir is still refused by `load_run`."""
    dirs = []
    for path in map(Path, paths):
        if path.is_file() and path.name == "summary.json":
            dirs.append(path.parent)
        elif path.is_file():
            logger.debug("skipping %s: a file, not a results dir", path)
        else:
            dirs.append(path)
    if paths and not dirs:
        raise FiguresError(f"no results dir among the {len(paths)} path(s) given (only files: "
                           f"{', '.join(str(p) for p in paths[:3])}{', …' if len(paths) > 3 else ''}); "
                           "pass dirs written by `vlmslim bench --out DIR`")
    return dirs


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Load every results dir among `paths` (files skipped, see `results_dirs`); duplicate model names get
    the dir name appended so labels stay unique."""
    if not paths:
        raise FiguresError("no results dirs given")
    runs = [load_run(p) for p in results_dirs(paths)]
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
    for run in runs:
        if seen[run.name] > 1:
            logger.warning("model name %r is used by several runs; labelling it %r", run.name, f"{run.name} ({run.dir.name})")
            run.name = f"{run.name} ({run.dir.name})"
    return runs


NOT_RECORDED = "not recorded"


def _device(run: Run) -> Any:
    """The hardware, e.g. 'cuda (NVIDIA H200)' or 'cpu (Intel Xeon …)': the device index is dropped
    (cuda:0 and cuda:1 of one model are the same device), the GPU or CPU model is kept."""
    device = run.environment.get("device") or run.protocol.get("device")
    return re.sub(r"\b(cuda|xpu|mps):\d+", r"\1", str(device)) if device else None


def _limit(run: Run) -> Any:
    """--limit draws a seeded subset: the same limit under another seed is another subset."""
    if "limit" not in run.dataset:
        return None
    limit = run.dataset["limit"]
    return "all" if limit is None else f"{limit} (seed {run.dataset.get('seed')})"


def _device_tag(value: str) -> str:
    inside = re.search(r"\((.*)\)", value)
    return inside.group(1) if inside and not value.startswith("cpu") else value.split(" (")[0]


@dataclass(frozen=True)
class ProtocolKey:
    get: Callable[[Run], Any]  # None = not recorded
    tag: Callable[[str], str]  # short text for figure labels when runs differ (--allow-mixed)


def _protocol(key: str) -> Callable[[Run], Any]:
    return lambda run: run.protocol.get(key)


# What must be equal for two runs' numbers to be comparable: each key moves cost, quality or both
# (batch size: per-request latency and peak memory; engine: compiled decode is ~5x faster; prompt and
# max new tokens: CIDEr and caption length; limit/dataset/n_samples: which samples were scored).
PROTOCOL_KEYS: dict[str, ProtocolKey] = {
    "task": ProtocolKey(lambda r: r.task, str),
    "dataset": ProtocolKey(lambda r: str(r.dataset_sha256)[:12] if r.dataset_sha256 else None, lambda v: f"data {v[:6]}"),
    "limit": ProtocolKey(_limit, lambda v: f"limit {v}"),
    "n_samples": ProtocolKey(lambda r: r.n_samples, lambda v: f"n={v}"),
    "prompt": ProtocolKey(lambda r: repr(r.protocol["prompt"]) if "prompt" in r.protocol else None,
                          lambda v: "prompt " + textwrap.shorten(v, 22, placeholder="…'")),
    "max_new_tokens": ProtocolKey(_protocol("max_new_tokens"), lambda v: f"max {v} tokens"),
    "batch_size": ProtocolKey(lambda r: r.batch_size, lambda v: f"batch {v}"),
    "device": ProtocolKey(_device, _device_tag),
    "dtype": ProtocolKey(_protocol("dtype"), lambda v: f"dtype {v}"),
    "engine": ProtocolKey(lambda r: r.engine, str),
    # compiled decode with q|k|v and gate|up fused (~6 % faster on an H100); unrecorded = before fusion existed
    "fuse": ProtocolKey(lambda r: bool(r.protocol.get("fuse")) if r.engine == "compiled" else None,
                        lambda v: "fused q|k|v" if v == "True" else "unfused q|k|v"),
    # compiled decode attention: split-K (vlmslim.attention) or SDPA; unrecorded = before split existed (SDPA)
    "attention": ProtocolKey(lambda r: r.protocol.get("attention", "sdpa") if r.engine == "compiled" else None,
                             lambda v: f"{v} attention"),
    "ocr_tokens": ProtocolKey(_protocol("ocr_tokens"), lambda v: "OCR tokens" if v == "True" else "no OCR tokens"),
}


def protocol_value(run: Run, key: str) -> str:
    value = PROTOCOL_KEYS[key].get(run)
    return NOT_RECORDED if value is None else str(value)


def mixed_fields(runs: Sequence[Run]) -> dict[str, dict[str, list[str]]]:
    """{key: {value: [run names]}} for each PROTOCOL_KEYS key whose value differs between runs."""
    out = {}
    for key in PROTOCOL_KEYS:
        groups: dict[str, list[str]] = {}
        for run in runs:
            groups.setdefault(protocol_value(run, key), []).append(run.name)
        if len(groups) > 1:
            out[key] = groups
    return out


def check_compatible(runs: Sequence[Run], *, allow_mixed: bool) -> dict[str, dict[str, list[str]]]:
    """Refuse runs whose task, data or protocol differ (PROTOCOL_KEYS): their costs and scores are not
    comparable. With `allow_mixed`, warn and tag each run with its differing values (`Run.tag`), so every
    figure label shows them. Returns the differences (empty when none)."""
    diffs = mixed_fields(runs)
    if not diffs:
        return diffs
    text = "; ".join(
        f"{key} (" + " vs ".join(f"{value}: {', '.join(names)}" for value, names in groups.items()) + ")"
        for key, groups in diffs.items()
    )
    if not allow_mixed:
        raise FiguresError(f"runs differ in {text}; their numbers are not comparable: re-run them with one "
                           "setting, or pass --allow-mixed to plot them together (differences labelled)")
    logger.warning("plotting runs that differ in %s (--allow-mixed)", text)
    for run in runs:
        run.tag = ", ".join(PROTOCOL_KEYS[key].tag(protocol_value(run, key)) for key in diffs)
    return diffs


def choose_baseline(runs: Sequence[Run], requested: Optional[str] = None) -> Run:
    """The reference run: `requested` (name or dir), else the one marked `is_baseline`, else the only
    unpruned 16-bit run."""
    if requested is not None:
        as_path = Path(requested).resolve()
        for run in runs:
            if run.name == requested or run.dir.resolve() == as_path:
                return run
        raise FiguresError(f"--baseline {requested!r} matches no run; runs: {', '.join(r.name for r in runs)}")
    for candidates, why in (
        ([r for r in runs if r.is_baseline], "marked is_baseline"),
        ([r for r in runs if not r.pruning and r.precision == "16-bit"], "unpruned 16-bit"),
    ):
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise FiguresError(
                f"several runs are {why} ({', '.join(r.name for r in candidates)}); choose one with --baseline NAME_OR_DIR"
            )
    raise FiguresError("no baseline: no run is marked is_baseline or is unpruned 16-bit; choose one with --baseline NAME_OR_DIR")


def load_samples(run: Run) -> Optional[dict[str, dict]]:
    """samples.jsonl as {id: row}, or None when the file is absent.

    The benchmark appends rows as it goes, so a killed run can leave a truncated last line and a resumed
    run can repeat an id: unparseable lines are skipped with a warning, the last row of an id wins.
    """
    path = run.dir / "samples.jsonl"
    if not path.is_file():
        return None
    rows: dict[str, dict] = {}
    bad = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and "id" in row and row.get("prediction") is not None:
            rows[str(row["id"])] = row
    if bad:
        logger.warning("%s: skipped %d unparseable line(s)", path, bad)
    return rows


def _step_methods(step: dict) -> list[str]:
    """The pruning methods of one manifest step: `vlmslim prune` records kind "prune" with a method such
    as "glu+heads"; older/other records name the method in `kind`."""
    if step.get("kind") == "prune" and step.get("method"):
        return [m for m in str(step["method"]).split("+") if m != "none"]
    return [str(step.get("kind", "?"))]
