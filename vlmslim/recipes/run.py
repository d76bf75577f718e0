"""Run a plan: each artifact through the library function its CLI command calls, stamped, logged, resumable.

A failing step is recorded (failures.json, sweep.jsonl) and whatever needs it is skipped; the others go
on and the caller exits non-zero. The sweep ends with `make_figures` and the comparison table over every
result that exists.
"""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vlmslim.benchmarks.run import run_bench
from vlmslim import data as _data
from vlmslim.errors import RecipeError, VlmslimError
from vlmslim.figures import FiguresConfig, make_figures
from vlmslim.figures.table import TableConfig, comparison_table
from vlmslim.io import write_json
from vlmslim.manifest import now_utc
from vlmslim.recipes import stamps
from vlmslim.recipes.plan import NOT_NEEDED, TABLE_FILE, Artifact, Plan
from vlmslim.recipes.steps import StepContext

logger = logging.getLogger(__name__)

LOG = "sweep.jsonl"
FAILURES = "failures.json"
LOCK = ".sweep.lock"
# What one failing step may raise without stopping the sweep: expected errors, bad option combinations the
# library refuses, and runtime failures of a model (a kernel refusing a shape, out of memory).
STEP_ERRORS = (VlmslimError, ValueError, RuntimeError)


@dataclass
class SweepResult:
    out: Path
    results: dict[str, Path] = field(default_factory=dict)  # variant -> results dir (finished)
    ran: list[str] = field(default_factory=list)  # artifact keys built in this run
    skipped: list[str] = field(default_factory=list)  # already done
    failures: list[dict] = field(default_factory=list)
    table: str | None = None
    figures: Path | None = None


def _log(plan: Plan, artifact: Artifact, event: str, **extra) -> None:
    row = {"time": now_utc(), "step": artifact.key, "event": event, "stamp": artifact.stamp, **extra}
    with open(plan.out / LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


class _Lock:
    """One sweep per out dir (the OS drops the lock when the process dies, so a kill never blocks a re-run)."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.fh = open(out / LOCK, "w")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self.fh.close()
            raise RecipeError(f"another `vlmslim sweep` is running on {out}; wait for it or pass another --out") from e

    def close(self) -> None:
        self.fh.close()


def run_plan(plan: Plan, progress: bool = True) -> SweepResult:
    """Build every artifact of `plan` that is not done; returns what ran, what failed and the results."""
    lock = _Lock(plan.out)
    try:
        result = SweepResult(plan.out)
        failed: dict[str, str] = {}  # artifact key -> why
        ctx = _context(plan)
        for a in plan.artifacts.values():
            if a.kind == "report":
                continue
            _one(plan, a, ctx, result, failed, progress)
        for name in plan.variants:
            bench = plan.artifacts[plan.results[name]]
            if bench.key not in failed and bench.marker.exists():
                result.results[name] = bench.path
        _report(plan, plan.artifacts["report"], result, failed)
        write_json(plan.out / FAILURES, result.failures)
        return result
    finally:
        lock.close()


def _context(plan: Plan) -> StepContext:
    return StepContext(base_model=plan.base, data=plan.data, calibration=plan.calibration, recovery=plan.recovery,
                       device=plan.device, cache_dir=plan.out / ".cache")


def _one(plan: Plan, a: Artifact, ctx: StepContext, result: SweepResult, failed: dict, progress: bool) -> None:
    blocked = [d for d in a.deps if d in failed]
    if blocked:
        failed[a.key] = f"needs {blocked[0]}, which failed"
        result.failures.append({"step": a.key, "error": "Skipped", "message": failed[a.key]})
        _log(plan, a, "blocked", message=failed[a.key])
        return
    if a.status in (stamps.DONE, NOT_NEEDED):
        result.skipped.append(a.key)
        if a.status == stamps.DONE and a.why:  # finished just before a kill: only its `done` stamp was missing
            stamps.finish(a.path, a.stamp, a.marker, a.payload, _extra(a))
            _log(plan, a, "done", recovered=True)
        else:
            _log(plan, a, "skip", status=a.status)
        return
    logger.info("sweep: %s: %s (%s)", a.key, a.what, a.status + (f": {a.why}" if a.why else ""))
    _prepare(a)
    stamps.start(a.path, a.stamp, a.marker, a.payload, _extra(a))
    _log(plan, a, "start", status=a.status)
    try:
        BUILDERS[a.kind](a, ctx, progress)
    except STEP_ERRORS as e:
        logger.error("sweep: %s failed: %s: %s", a.key, type(e).__name__, e)
        failed[a.key] = f"{type(e).__name__}: {e}"
        result.failures.append({"step": a.key, "error": type(e).__name__, "message": str(e)})
        _log(plan, a, "failed", message=str(e)[:500])
        return
    finally:
        gc.collect()  # a step's model (or a failed step's frames) must be freed before the next one
    stamps.finish(a.path, a.stamp, a.marker, a.payload, _extra(a))
    result.ran.append(a.key)
    _log(plan, a, "done")


def _extra(a: Artifact) -> dict:
    return {"kind": a.kind, "what": a.what, **({"generation": a.generation} if a.generation else {})}


def _prepare(a: Artifact) -> None:
    """A bench rebuilt over other generations starts from an empty results dir (bench refuses to mix);
    one whose generations still hold keeps its rows and only re-scores."""
    if a.kind != "bench" or not a.path.exists() or a.status != stamps.REBUILD:
        return
    record = stamps.read_stamp(a.path) or {}
    if record.get("generation") != a.generation:
        logger.info("sweep: %s: removing %s (other checkpoint, data or protocol)", a.key, a.path)
        shutil.rmtree(a.path)


# ---------------------------------------------------------------- builders, one per artifact kind


def _build_data(a: Artifact, ctx: StepContext, progress: bool) -> None:
    if a.spec.kind == "synthetic":
        _data.make_synthetic(a.path, overwrite=True, **a.spec.options)
    else:
        options = dict(a.spec.options)
        _data.download(options.pop("name"), a.path, overwrite=True, **options)  # imports `datasets` on first use


def _build_checkpoint(a: Artifact, ctx: StepContext, progress: bool) -> None:
    step, source = a.spec
    step.kind.run(source, a.path, step.config, ctx)


def _build_bench(a: Artifact, ctx: StepContext, progress: bool) -> None:
    run_bench(a.spec, progress=progress)


BUILDERS = {"data": _build_data, "checkpoint": _build_checkpoint, "bench": _build_bench}


def _report(plan: Plan, a: Artifact, result: SweepResult, failed: dict) -> None:
    """Figures + table over the results that exist; stamped done only when every selected result is in."""
    dirs = [str(p) for p in result.results.values()]
    complete = len(dirs) == len(plan.variants)
    if not dirs:
        return
    if a.status == stamps.DONE and complete:
        result.skipped.append(a.key)
        _log(plan, a, "skip", status=a.status)
        result.figures, result.table = a.path, (a.path / TABLE_FILE).read_text()
        return
    recipe = plan.recipe
    baseline = recipe.baseline if recipe.baseline in result.results else None
    stamps.start(a.path, a.stamp, a.marker, a.payload, _extra(a))
    _log(plan, a, "start")
    try:
        make_figures(dirs, a.path, FiguresConfig(**recipe.figures, baseline=baseline, overwrite=True))
        table = comparison_table(dirs, TableConfig(**recipe.table, baseline=baseline))
        (a.path / TABLE_FILE).write_text(table)
    except VlmslimError as e:
        logger.error("sweep: figures/table failed: %s", e)
        result.failures.append({"step": a.key, "error": type(e).__name__, "message": str(e)})
        _log(plan, a, "failed", message=str(e)[:500])
        return
    result.figures, result.table = a.path, table
    if complete:
        stamps.finish(a.path, a.stamp, a.marker, a.payload, _extra(a))
        result.ran.append(a.key)
        _log(plan, a, "done")
    else:
        _log(plan, a, "partial", message=f"{len(dirs)} of {len(plan.variants)} results")
