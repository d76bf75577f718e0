"""A recipe file -> a validated `Recipe`. Every mistake is one `RecipeError` line naming the file, the line
and the key path: `study.yaml:12: variants[3].steps[0]: unknown key 'glu_ratio' for prune (known: ...)`.

```yaml
name: my-study
model: llava-hf/llava-1.5-7b-hf      # hub id, HF dir, vlmslim checkpoint or "demo"
device: auto                         # every step; auto = cuda if available, else cpu
data: {download: {name: coco-captions, split: val, limit: 500}}   # or a dir, or {synthetic: {n: 100}}
calibration: {synthetic: {n: 32, seed: 7}}                        # for steps that need activations
recovery: {synthetic: {n: 500, seed: 11}}                         # training images of `recover` steps
bench: {batch_size: 8, max_new_tokens: 64}                        # BenchConfig fields: one protocol
figures: {metric: cider}                                          # FiguresConfig fields
table: {columns: [name, cider, cider_delta, latency, size]}       # TableConfig fields
baseline: base                       # default: the first variant without steps
variants:
  - name: base
  - name: glu30
    steps: [{prune: {glu: 0.3}}]     # PruneConfig fields
  - name: glu30-nf4
    source: glu30                    # start from that variant's checkpoint
    steps: [{quantize: {recipe: nf4, target: language}}, {tokens: {image_tokens: 64}}]
  - name: glu30-kd
    source: glu30
    steps: [{recover: {method: kd, steps: 60}}]   # RecoverConfig fields; teacher = `model`
```
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from vlmslim.benchmarks.run import BenchConfig
from vlmslim.data import SOURCES, SyntheticConfig
from vlmslim.errors import RecipeError
from vlmslim.figures import FiguresConfig
from vlmslim.figures.table import TableConfig
from vlmslim.loading import is_random
from vlmslim.recipes.lines import Lines, Path_, apply_override, load_yaml
from vlmslim.recipes.steps import STEPS, StepKind

TOP_KEYS = ("name", "description", "model", "device", "out", "data", "calibration", "recovery", "bench", "figures",
            "table", "baseline", "variants")
VARIANT_KEYS = ("name", "source", "steps", "description")
SYNTHETIC_KEYS = tuple(f.name for f in dataclasses.fields(SyntheticConfig))
DOWNLOAD_KEYS = ("name", "split", "limit", "seed", "source", "revision")
DATA_KINDS = {"synthetic": SYNTHETIC_KEYS, "download": DOWNLOAD_KEYS}
# BenchConfig fields a recipe does not set under `bench:`, and where each comes from instead.
BENCH_RESERVED = {"model": "the recipe's `model` and each variant's steps", "data": "the recipe's `data`",
                  "out": "the sweep (--out)", "name": "the variant's name", "baseline": "the top-level `baseline`",
                  "device": "the top-level `device` (or --device)", "image_tokens": "a variant's `tokens` step",
                  "token_method": "a variant's `tokens` step"}
BENCH_KEYS = tuple(f.name for f in dataclasses.fields(BenchConfig) if f.name not in BENCH_RESERVED)
FIGURES_KEYS = ("metric", "costs", "spotcheck", "seed", "note")
TABLE_KEYS = ("columns", "sort")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # a variant name is a directory name


@dataclass(frozen=True)
class DataSpec:
    """An evaluation/calibration set: an existing `vlmslim data` dir, or how to make one."""

    kind: str  # "dir", "synthetic" (make_synthetic) or "download" (vlmslim.data.download)
    options: dict = field(default_factory=dict)  # dir: {"path"}; else the producer's options

    def to_dict(self) -> dict:
        return {"kind": self.kind, **self.options}


@dataclass(frozen=True)
class Step:
    kind: StepKind
    config: object  # PruneConfig, QuantSpec, TokenSpec, ...
    options: dict  # as written in the recipe

    def describe(self) -> str:
        return f"{self.kind.name} " + ", ".join(f"{k}={v}" for k, v in self.options.items())


@dataclass(frozen=True)
class Variant:
    name: str
    source: str | None = None  # another variant whose final checkpoint this one starts from
    steps: tuple[Step, ...] = ()
    description: str = ""

    @property
    def checkpoint_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.kind.checkpoint)

    @property
    def bench_options(self) -> dict:
        out: dict = {}
        for s in self.steps:
            out.update(s.kind.bench_options(s.config))
        return out


@dataclass(frozen=True)
class Recipe:
    path: str
    name: str
    model: str
    data: DataSpec
    variants: tuple[Variant, ...]
    device: str = "auto"
    out: str | None = None
    calibration: DataSpec | None = None
    recovery: DataSpec | None = None
    bench: dict = field(default_factory=dict)  # BenchConfig fields shared by every variant
    figures: dict = field(default_factory=dict)
    table: dict = field(default_factory=dict)
    baseline: str | None = None
    description: str = ""

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


# ---------------------------------------------------------------- reading


def load_recipe(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Recipe:
    """Read and validate a recipe file; `overrides` are `KEY=VALUE` assignments (`--set`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe {path}: {e}") from e
    data, lines = load_yaml(text, str(path))
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with at least `model`, `data` and `variants`")
    for assignment in overrides:
        apply_override(data, lines, assignment)
    return parse_recipe(data, lines, str(path))


def parse_recipe(data: dict, lines: Lines, path: str) -> Recipe:
    _check_keys(data, TOP_KEYS, (), lines, "a recipe")
    for key in ("model", "data", "variants"):
        if data.get(key) is None:
            raise lines.error((), f"missing `{key}`")
    model = _string(data["model"], ("model",), lines)
    if is_random(model):
        raise lines.error(("model",), "random-weight models have no processor to benchmark with; use "
                                      "`vlmslim bench --random-weights` for architecture-only runs")
    calibration = None if data.get("calibration") is None else _data(data["calibration"], ("calibration",), lines)
    recovery = None if data.get("recovery") is None else _data(data["recovery"], ("recovery",), lines)
    variants = _variants(data["variants"], lines, calibration is not None, recovery is not None)
    names = [v.name for v in variants]
    baseline = data.get("baseline")
    if baseline is None:
        baseline = next((v.name for v in variants if not v.steps and v.source is None), None)
    elif baseline not in names:
        raise lines.error(("baseline",), f"{baseline!r} is not a variant (variants: {', '.join(names)})")
    return Recipe(
        path=path, name=_string(data.get("name") or Path(path).stem, ("name",), lines), model=model,
        data=_data(data["data"], ("data",), lines), variants=variants,
        device=_string(data.get("device") or "auto", ("device",), lines),
        out=None if data.get("out") is None else _string(data["out"], ("out",), lines),
        calibration=calibration, recovery=recovery, bench=_bench(data.get("bench"), lines), figures=_figures(data.get("figures"), lines),
        table=_table(data.get("table"), lines), baseline=baseline, description=str(data.get("description") or ""),
    )


# ---------------------------------------------------------------- pieces


def _check_keys(mapping: dict, known: tuple[str, ...], path: Path_, lines: Lines, what: str) -> None:
    for key in mapping:
        if key not in known:
            raise lines.error(path, f"unknown key {key!r} for {what} (known: {', '.join(known)})", at=path + (key,))


def _named(path: Path_, options: dict, error: Exception) -> Path_:
    """The option a config's ValueError names ("batch_size must be ..."): its line, not the block's."""
    key = next((k for k in options if str(error).startswith(k)), None)
    return path if key is None else path + (key,)


def _mapping(value, path: Path_, lines: Lines, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise lines.error(path, f"{what} must be a mapping of options, got {type(value).__name__} {value!r}")
    return value


def _string(value, path: Path_, lines: Lines) -> str:
    if not isinstance(value, str) or not value.strip():
        raise lines.error(path, f"must be a non-empty string, got {value!r}")
    return value


def _data(value, path: Path_, lines: Lines) -> DataSpec:
    if isinstance(value, str):
        return DataSpec("dir", {"path": value})
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in DATA_KINDS:
        raise lines.error(path, "must be a `vlmslim data` directory, {synthetic: {n, seed, ...}} or "
                                "{download: {name, split, limit, ...}}")
    kind, options = next(iter(value.items()))
    options = _mapping(options, path + (kind,), lines, kind)
    _check_keys(options, DATA_KINDS[kind], path + (kind,), lines, f"data {kind}")
    try:
        if kind == "synthetic":
            SyntheticConfig(**options)
        elif options.get("name") not in SOURCES:
            raise ValueError(f"name must be one of {', '.join(sorted(SOURCES))}, got {options.get('name')!r}")
        elif options.get("limit") is not None and (not isinstance(options["limit"], int) or options["limit"] < 1):
            raise ValueError(f"limit must be an integer >= 1, got {options['limit']!r}")
    except (TypeError, ValueError) as e:
        raise lines.error(path + (kind,), str(e)) from e
    return DataSpec(kind, dict(options))


def _variants(value, lines: Lines, has_calibration: bool, has_recovery: bool) -> tuple[Variant, ...]:
    if not isinstance(value, list) or not value:
        raise lines.error(("variants",), "must be a non-empty list of variants (`- name: base`)")
    variants: list[Variant] = []
    for i, item in enumerate(value):
        path = ("variants", i)
        item = _mapping(item, path, lines, "a variant")
        _check_keys(item, VARIANT_KEYS, path, lines, "a variant")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise lines.error(path, f"name must be a directory-safe name (letters, digits, . _ + -), got {name!r}",
                              at=path + ("name",))
        if any(v.name == name for v in variants):
            raise lines.error(path, f"variant name {name!r} is used twice", at=path + ("name",))
        source = item.get("source")
        if source is not None:
            earlier = {v.name: v for v in variants}
            if source not in earlier:
                raise lines.error(path, f"source {source!r} is not a variant defined above "
                                        f"({', '.join(earlier) or 'none'})", at=path + ("source",))
            if any(not s.kind.checkpoint for s in earlier[source].steps):
                raise lines.error(path, f"source {source!r} reduces image tokens at bench time; start from its "
                                        "checkpoint's variant and add the tokens step here", at=path + ("source",))
        steps = _steps(item.get("steps"), path + ("steps",), lines, has_calibration, has_recovery)
        variants.append(Variant(name, source, steps, str(item.get("description") or "")))
    return tuple(variants)


def _steps(value, path: Path_, lines: Lines, has_calibration: bool, has_recovery: bool) -> tuple[Step, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise lines.error(path, "must be a list of steps (`- prune: {glu: 0.3}`)")
    steps: list[Step] = []
    for j, item in enumerate(value):
        step_path = path + (j,)
        if not isinstance(item, dict) or len(item) != 1:
            raise lines.error(step_path, f"a step is one `KIND: {{options}}` mapping (kinds: {', '.join(STEPS)})")
        name, options = next(iter(item.items()))
        if name not in STEPS:
            raise lines.error(step_path, f"unknown step {name!r} (known: {', '.join(STEPS)})", at=step_path + (name,))
        kind = STEPS[name]
        options = _mapping(options, step_path + (name,), lines, name)
        for key in options:
            if key not in kind.keys:
                raise lines.error(step_path, f"unknown key {key!r} for {name} (known: {', '.join(kind.keys)})",
                                  at=step_path + (name, key))
        missing = [k for k in kind.required if k not in options]
        if missing:
            raise lines.error(step_path, f"{name} needs {', '.join(missing)}", at=step_path + (name,))
        try:
            config = kind.parse(dict(options))
        except (TypeError, ValueError) as e:
            raise lines.error(step_path, f"{name}: {e}", at=step_path + (name,)) from e
        if kind.needs_calibration(config) and not has_calibration:
            raise lines.error(step_path, f"{name} needs calibration data ({config.calibration_reason}): add a "
                                         "top-level `calibration:` (a data dir or spec)", at=step_path + (name,))
        if kind.needs_recovery and not has_recovery:
            raise lines.error(step_path, f"{name} trains on recovery data: add a top-level `recovery:` (a data dir "
                                         "or spec, disjoint from `data`)", at=step_path + (name,))
        if steps and not steps[-1].kind.checkpoint:
            raise lines.error(step_path, f"{steps[-1].kind.name} applies at bench time and must be the last step",
                              at=step_path + (name,))
        steps.append(Step(kind, config, dict(options)))
    return tuple(steps)


def _bench(value, lines: Lines) -> dict:
    options = _mapping(value, ("bench",), lines, "bench")
    for key in options:
        if key in BENCH_RESERVED:
            raise lines.error(("bench",), f"{key!r} is not a bench setting here: it comes from {BENCH_RESERVED[key]}",
                              at=("bench", key))
    _check_keys(options, BENCH_KEYS, ("bench",), lines, "bench")
    try:
        BenchConfig(model="recipe", data="recipe", out="recipe", **options)
    except (TypeError, ValueError) as e:
        raise lines.error(("bench",), str(e), at=_named(("bench",), options, e)) from e
    return dict(options)


def _figures(value, lines: Lines) -> dict:
    options = dict(_mapping(value, ("figures",), lines, "figures"))
    _check_keys(options, FIGURES_KEYS, ("figures",), lines, "figures")
    if isinstance(options.get("costs"), (list, str)):
        options["costs"] = tuple([options["costs"]] if isinstance(options["costs"], str) else options["costs"])
    try:
        FiguresConfig(**options)
    except (TypeError, ValueError) as e:
        raise lines.error(("figures",), str(e), at=_named(("figures",), options, e)) from e
    return options


def _table(value, lines: Lines) -> dict:
    options = dict(_mapping(value, ("table",), lines, "table"))
    _check_keys(options, TABLE_KEYS, ("table",), lines, "table")
    try:
        TableConfig(**options)
    except (TypeError, ValueError) as e:
        raise lines.error(("table",), str(e), at=_named(("table",), options, e)) from e
    return options
