"""Recipe -> plan: every artifact of the sweep with its stamp, dependencies and status, before anything runs.

```
OUT/
  data/eval/, data/calibration/, data/recovery/   materialised data specs (absent for an existing data dir)
  checkpoints/<variant>/                 the variant's last checkpoint step (earlier ones: <variant>.<i>-<kind>)
  results/<variant>/                     `vlmslim bench` results dir
  figures/                               `vlmslim figures` output + table.md
  *.stamp.json                           beside each artifact (stamps.py)
  sweep.jsonl  failures.json             what ran when; what failed
```

Artifacts are content-addressed by their stamp: two variants that spell the same chain share one
checkpoint. An artifact that nothing still to run needs (e.g. a deleted checkpoint whose results are done)
is not rebuilt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from vlmslim.benchmarks.results import PROTOCOL_KEYS, checkpoint_sha256
from vlmslim.benchmarks.run import BenchConfig
from vlmslim.errors import DataError, RecipeError
from vlmslim.io import sha256_file
from vlmslim.loading import resolve_device, resolve_source
from vlmslim.manifest import MANIFEST
from vlmslim.recipes import stamps
from vlmslim.recipes.schema import DataSpec, Recipe, Variant

logger = logging.getLogger(__name__)

NOT_NEEDED = "not needed"  # absent, but everything that needs it is done
TABLE_FILE = "table.md"


@dataclass
class Artifact:
    key: str  # "data:eval", "checkpoint:glu30", "bench:glu30", "report"
    kind: str  # data | checkpoint | bench | report
    path: Path
    marker: Path  # the file whose presence means complete
    payload: dict  # what the stamp hashes (config + the inputs' stamps)
    deps: tuple[str, ...]
    what: str  # one line for the plan
    spec: object = None  # kind-specific: DataSpec, (Step, input source), BenchConfig, report settings
    generation: str | None = None  # bench: stamp of what the generated rows depend on
    status: str = ""
    why: str = ""

    @property
    def stamp(self) -> str:
        return stamps.digest(self.payload)


@dataclass
class Plan:
    recipe: Recipe
    out: Path
    device: str
    base: str  # the resolved base model source
    data: Path | None = None  # the evaluation set (made by `data:eval` unless the recipe names a dir)
    calibration: Path | None = None
    recovery: Path | None = None
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # in run order
    variants: list[str] = field(default_factory=list)  # the selected variants, recipe order
    results: dict[str, str] = field(default_factory=dict)  # variant -> its bench artifact key

    def rows(self) -> list[list[str]]:
        """[step, what, path, status] per artifact, for `--dry-run`."""
        out = []
        for a in self.artifacts.values():
            path = a.path.relative_to(self.out) if a.path.is_relative_to(self.out) else a.path
            out.append([a.key, a.what, str(path), a.status + (f" ({a.why})" if a.why else "")])
        return out


# ---------------------------------------------------------------- inputs


def _model_stamp(src: str, cache: Path) -> str:
    """A local base model: sha256 of its weights files (cached by name, size and mtime); a hub id: its name
    (resolved and hashed by `bench` itself, which refuses to mix results of other weights)."""
    if not Path(src).is_dir():
        return f"hub:{src}"
    files = sorted(p for p in Path(src).iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))
    key = json.dumps([str(Path(src).resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in known:
        logger.info("hashing the weights of %s (the stamp of every step built on it)", src)
        known[key] = checkpoint_sha256(src)[0]  # weights + config + processor files, as bench keys results
        if cache.parent.parent.is_dir():  # only once the sweep's out dir exists: a dry run writes nothing
            cache.parent.mkdir(exist_ok=True)
            cache.write_text(json.dumps(known))
    return f"weights:{known[key]}"


def _data_input(spec: DataSpec, path: Path, key: str, plan: Plan) -> tuple[Path, str, str | None]:
    """(data dir, stamp, artifact key or None for an existing dir)."""
    if spec.kind == "dir":
        given = Path(spec.options["path"])
        if not (given / "samples.jsonl").is_file():
            raise DataError(f"{key.split(':')[1]}: {given} is not a `vlmslim data` directory (no samples.jsonl)")
        return given, f"samples:{sha256_file(given / 'samples.jsonl')}", None
    payload = {"kind": "data", "spec": spec.to_dict()}
    what = f"{spec.kind} " + ", ".join(f"{k}={v}" for k, v in spec.options.items())
    plan.artifacts[key] = Artifact(key, "data", path, path / "meta.json", payload, (), what, spec=spec)
    return path, plan.artifacts[key].stamp, key


# ---------------------------------------------------------------- the plan


def make_plan(recipe: Recipe, out: str | Path, only: tuple[str, ...] = (), device: str | None = None) -> Plan:
    """Every artifact the recipe (or its `only` variants and what they need) makes, with its status."""
    names = [v.name for v in recipe.variants]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise RecipeError(f"--only: unknown variant(s) {', '.join(unknown)} (variants of {recipe.path}: "
                          f"{', '.join(names)})")
    out = Path(out)
    plan = Plan(recipe, out, resolve_device(device or recipe.device), resolve_source(recipe.model))
    base_stamp = _model_stamp(plan.base, out / ".cache" / "weights.json")
    data, data_stamp, data_key = _data_input(recipe.data, out / "data" / "eval", "data:eval", plan)
    calibration = (None, None, None) if recipe.calibration is None else \
        _data_input(recipe.calibration, out / "data" / "calibration", "data:calibration", plan)
    recovery = (None, None, None) if recipe.recovery is None else \
        _data_input(recipe.recovery, out / "data" / "recovery", "data:recovery", plan)
    plan.data, plan.calibration, plan.recovery = data, calibration[0], recovery[0]
    final = {}  # variant -> (checkpoint source, stamp, artifact key or None)
    by_stamp: dict[str, Artifact] = {}
    for v in recipe.variants:
        final[v.name] = _checkpoints(plan, v, final[v.source] if v.source else (plan.base, base_stamp, None),
                                     calibration, (recovery, base_stamp), by_stamp)
    order = ([recipe.baseline] if recipe.baseline else []) + [n for n in names if n != recipe.baseline]
    for name in order:
        _bench(plan, recipe.variant(name), final[name], (data, data_stamp, data_key))
    plan.variants = [n for n in names if not only or n in only]
    _report(plan)
    _select(plan)
    return plan


def _checkpoints(plan: Plan, v: Variant, start: tuple, calibration: tuple, recovery: tuple, by_stamp: dict) -> tuple:
    """The checkpoint artifacts of `v`'s steps from `start` = (source, stamp, key); `recovery` = ((dir, stamp,
    key) of the recovery set, the base model's stamp): a `recover` step depends on both (teacher = base)."""
    src, stamp, key = start
    steps = v.checkpoint_steps
    for i, step in enumerate(steps):
        payload = {"kind": step.kind.name, "config": step.kind.payload(step.config), "input": stamp}
        deps = [key] if key else []
        if step.kind.needs_calibration(step.config):
            payload["calibration"] = calibration[1]
            deps += [calibration[2]] if calibration[2] else []
        if step.kind.needs_recovery:
            (_, data_stamp, data_key), teacher_stamp = recovery
            payload.update(recovery=data_stamp, teacher=teacher_stamp)
            deps += [data_key] if data_key else []
        found = by_stamp.get(stamps.digest(payload))
        if found is None:
            name = v.name if i == len(steps) - 1 else f"{v.name}.{i}-{step.kind.name}"
            path = plan.out / "checkpoints" / name
            if f"checkpoint:{name}" in plan.artifacts:
                raise RecipeError(f"{plan.recipe.path}: variant {v.name!r}: checkpoint name {name} is taken; "
                                  "rename the variant")
            what = f"{step.describe()} <- {key.split(':', 1)[1] if key else plan.recipe.model}"
            found = Artifact(f"checkpoint:{name}", "checkpoint", path, path / MANIFEST, payload, tuple(deps), what,
                             spec=(step, str(src)))
            plan.artifacts[found.key] = by_stamp[found.stamp] = found
        src, stamp, key = str(found.path), found.stamp, found.key
    return src, stamp, key


def _bench(plan: Plan, v: Variant, checkpoint: tuple, data: tuple) -> None:
    src, ck_stamp, ck_key = checkpoint
    path = plan.out / "results" / v.name
    baseline = plan.artifacts.get(plan.results.get(plan.recipe.baseline, "")) if v.name != plan.recipe.baseline else None
    config = BenchConfig(model=src, data=str(data[0]), out=str(path), name=v.name, device=plan.device,
                         baseline=str(baseline.path) if baseline else None, **plan.recipe.bench, **v.bench_options)
    settings = dataclasses.asdict(config)
    for k in ("model", "data", "out", "baseline"):  # paths: keyed by the stamps of what they hold instead
        settings.pop(k)
    generation = {"checkpoint": ck_stamp, "data": data[1], **{k: settings[k] for k in PROTOCOL_KEYS}}
    payload = {"kind": "bench", "generation": generation, "config": settings,
               "baseline": baseline.stamp if baseline else None}
    deps = tuple(k for k in (ck_key, data[2], baseline.key if baseline else None) if k)
    tokens = f", {v.bench_options['image_tokens']} image tokens ({v.bench_options['token_method']})" \
        if v.bench_options else ""
    what = f"bench {ck_key.split(':', 1)[1] if ck_key else plan.recipe.model}{tokens}" + (f" vs {baseline.key}" if baseline else "")
    key = f"bench:{v.name}"
    plan.artifacts[key] = Artifact(key, "bench", path, path / "summary.json", payload, deps, what, spec=config,
                                   generation=stamps.digest(generation))
    plan.results[v.name] = key


def _report(plan: Plan) -> None:
    benches = [plan.results[n] for n in plan.variants]
    recipe = plan.recipe
    payload = {"kind": "report", "figures": recipe.figures, "table": recipe.table, "baseline": recipe.baseline,
               "results": [plan.artifacts[k].stamp for k in benches]}
    path = plan.out / "figures"
    plan.artifacts["report"] = Artifact("report", "report", path, path / TABLE_FILE, payload, tuple(benches),
                                        f"figures + {TABLE_FILE} over {len(benches)} results", spec=benches)


def _select(plan: Plan) -> None:
    """Keep what the selected variants need; statuses; artifacts only done ones need become NOT_NEEDED."""
    roots = {"report", *(plan.results[n] for n in plan.variants)}
    keep: set[str] = set()
    stack = list(roots)
    while stack:
        key = stack.pop()
        if key not in keep:
            keep.add(key)
            stack += plan.artifacts[key].deps
    plan.artifacts = {k: a for k, a in plan.artifacts.items() if k in keep}
    for a in plan.artifacts.values():
        a.status, a.why = stamps.status(a.path, a.stamp, a.marker, a.payload)
        if a.kind == "bench" and a.status == stamps.REBUILD and _same_generation(a):
            a.why += "; re-scores the kept generations"
    wanted = set(roots)
    for a in reversed(list(plan.artifacts.values())):
        if a.key in wanted and a.status != stamps.DONE:
            wanted.update(a.deps)
    for a in plan.artifacts.values():
        if a.key not in wanted and a.status != stamps.DONE:
            a.status, a.why = NOT_NEEDED, "everything built from it is done"


def _same_generation(a: Artifact) -> bool:
    record = stamps.read_stamp(a.path) or {}
    return record.get("generation") == a.generation
