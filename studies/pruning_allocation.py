"""Criterion x allocation on the demo model at equal parameter count: CIDEr-D with paired CIs vs uniform maw.

    python -m studies.pruning_allocation --out /tmp/pruning-allocation      # ~1 h on a 2-core CPU
    python -m studies.pruning_allocation --out /tmp/pa --components glu --criteria maw,taylor
    python -m studies.pruning_allocation --out /tmp/pa --components glu --criteria activation --allocations owl \
        --recover-steps 60 --results docs/results/allocation_recovery_glu      # then recover each and re-bench

For each component (GLU 80 %, heads 25 %) every {criterion} x {allocation} run prunes the shipped demo
model (`vlmslim.load_model("demo")`) with `--round-to 32` and the same global budget (an allocation only
moves units between layers, so all runs of a component have the same parameter count; checked), then
benches it on the demo's eval set (synthetic seed 0, n 100) with paired bootstrap differences vs the
uniform weight-criterion run of that component. Calibration: synthetic seed 7, n 32 (as the demo).
Writes docs/results/pruning_allocation.{json,md} (the markdown table docs/pruning.md quotes).

`--recover-steps N` then distils every pruned checkpoint toward the demo (`recover_checkpoint`, kd, N steps of
16, lr 1e-3, on 500 synthetic scenes of seed 1 held out from the eval set: the demo's recovery settings) and
benches it again, paired vs the recovered uniform weight-criterion run: does the allocation's gain survive
recovery?
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from vlmslim.benchmarks import bench
from vlmslim.data import make_synthetic
from vlmslim.io import write_json
from vlmslim.loading import resolve_source
from vlmslim.pruning import PruneConfig, prune_checkpoint
from vlmslim.recovery import RecoverConfig, recover_checkpoint

logger = logging.getLogger("pruning_allocation")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Component:
    name: str
    ratio: dict  # PruneConfig ratio fields
    criterion_field: str  # "importance" or "head_importance"
    weight_criterion: str  # the uniform baseline's criterion


COMPONENTS = {
    "glu": Component("glu", {"glu": 0.8}, "importance", "maw"),
    "heads": Component("heads", {"heads": 0.25}, "head_importance", "o_norm"),
}
CRITERIA = {"glu": ("maw", "activation", "taylor"), "heads": ("o_norm", "activation", "taylor")}
ALLOCATIONS = ("uniform", "sensitivity", "owl")


def _config(comp: Component, criterion: str, allocation: str, calibration: Path, args) -> PruneConfig:
    return PruneConfig(**comp.ratio, **{comp.criterion_field: criterion}, allocation=allocation,
                       round_to=args["round_to"], max_layer_ratio=args["max_layer_ratio"],
                       calibration=str(calibration), calibration_samples=args["calibration_n"],
                       seed=args["calibration_seed"])


def _row(name: str, comp: Component, criterion: str, allocation: str, manifest: dict, summary: dict) -> dict:
    step = manifest["steps"][-1]
    plan = step["plan"][comp.name]
    paired = (summary.get("paired_vs_baseline") or {}).get("differences", {}).get("cider")
    return {"name": name, "component": comp.name, "criterion": criterion, "allocation": allocation,
            "kept_per_layer": plan["kept"], "layer_scores": plan.get("layer_scores"),
            "params_language": step["params_after"]["language"], "prune_s": step["seconds"],
            "cider": summary["metrics"]["cider"], "cider_ci": summary["ci"]["cider"],
            "bleu4": summary["metrics"].get("bleu4"), "caption_len": summary["metrics"].get("caption_len_mean"),
            "delta_cider": paired}


def _markdown(rows: list[dict], meta: dict) -> str:
    out = [f"Demo model, synthetic eval set (seed 0, n {meta['n']}), calibration seed {meta['calibration_seed']} "
           f"n {meta['calibration_n']}, `--round-to {meta['round_to']}`, `--max-layer-ratio {meta['max_layer_ratio']}`; "
           f"{meta['machine']}, {meta['date']}. CIDEr-D with its bootstrap 95 % CI; Δ = paired difference vs the "
           "component's uniform weight-criterion run (bootstrap over images, 1,000 resamples); ✓ = CI of Δ excludes 0.",
           ""]
    for comp in dict.fromkeys(r["component"] for r in rows):
        part = [r for r in rows if r["component"] == comp]
        unit = "GLU neurons kept per layer" if comp == "glu" else "KV groups kept per layer"
        out += [f"**{comp}** ({part[0]['params_language']:,} language-model parameters in every run)", "",
                f"| criterion | allocation | {unit} | CIDEr-D (95 % CI) | Δ vs uniform (95 % CI) | BLEU-4 | "
                "caption length | prune s |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in part:
            lo, hi = r["cider_ci"]
            d = r["delta_cider"]
            delta = "baseline" if d is None else (f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                                                  + (" ✓" if d["lo"] > 0 or d["hi"] < 0 else ""))
            out.append(f"| {r['criterion']} | {r['allocation']} | {', '.join(map(str, r['kept_per_layer']))} | "
                       f"{r['cider']:.3f} [{lo:.3f}, {hi:.3f}] | {delta} | {r['bleu4']:.3f} | "
                       f"{r['caption_len']:.1f} | {r['prune_s']:.1f} |")
        out.append("")
    recovered = [r for r in rows if r.get("recovered")]
    if recovered:
        out += [f"**After `vlmslim recover`** (kd, {meta['recover_steps']} steps of 16 on 500 scenes of seed 1; Δ vs the "
                "recovered uniform weight-criterion run of the same component)", "",
                "| component | criterion | allocation | CIDEr-D pruned | CIDEr-D recovered (95 % CI) | "
                "Δ vs uniform, recovered (95 % CI) | recover s |", "|---|---|---|---:|---:|---:|---:|"]
        for r in recovered:
            rec = r["recovered"]
            lo, hi = rec["cider_ci"]
            d = rec["delta_cider"]
            delta = "baseline" if d is None else (f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                                                  + (" ✓" if d["lo"] > 0 or d["hi"] < 0 else ""))
            out.append(f"| {r['component']} | {r['criterion']} | {r['allocation']} | {r['cider']:.3f} | "
                       f"{rec['cider']:.3f} [{lo:.3f}, {hi:.3f}] | {delta} | {rec['seconds']:.0f} |")
        out.append("")
    return "\n".join(out)


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Work dir: data, checkpoints, results.")
@click.option("--components", default="glu,heads", show_default=True)
@click.option("--criteria", default=None, help="Comma list per run (default: all of the component's).")
@click.option("--allocations", default=",".join(ALLOCATIONS), show_default=True)
@click.option("--n", default=100, show_default=True, help="Eval scenes (synthetic seed 0, as the demo).")
@click.option("--calibration-n", default=32, show_default=True)
@click.option("--calibration-seed", default=7, show_default=True)
@click.option("--round-to", default=32, show_default=True)
@click.option("--max-layer-ratio", default=0.9, show_default=True)
@click.option("--recover-steps", default=0, show_default=True, help="Also recover each run (kd) and re-bench.")
@click.option("--results", default=str(ROOT / "docs" / "results" / "pruning_allocation"), show_default=True,
              help="Writes <results>.json and <results>.md.")
def main(out, components, criteria, allocations, n, calibration_n, calibration_seed, round_to, max_layer_ratio,
         recover_steps, results):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "codecarbon", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = dict(round_to=round_to, max_layer_ratio=max_layer_ratio, calibration_n=calibration_n,
                calibration_seed=calibration_seed)
    root = Path(out)
    eval_dir, calib_dir = root / "data" / "eval", root / "data" / "calibration"
    if not (eval_dir / "meta.json").exists():
        make_synthetic(eval_dir, n=n, seed=0)
    if not (calib_dir / "meta.json").exists():
        make_synthetic(calib_dir, n=calibration_n, seed=calibration_seed)
    train_dir = root / "data" / "recover-train"
    if recover_steps and not (train_dir / "meta.json").exists():
        make_synthetic(train_dir, n=500, seed=1)
    base = resolve_source("demo")
    rows = []
    for comp in (COMPONENTS[c] for c in components.split(",")):
        chosen = criteria.split(",") if criteria else CRITERIA[comp.name]
        runs = [(comp.weight_criterion, "uniform")] + [(c, a) for c in chosen for a in allocations.split(",")
                                                       if (c, a) != (comp.weight_criterion, "uniform")]
        baseline = root / "results" / f"{comp.name}-{comp.weight_criterion}-uniform"
        for criterion, allocation in runs:
            name = f"{comp.name}-{criterion}-{allocation}"
            ckpt, res = root / "checkpoints" / name, root / "results" / name
            if not (ckpt / "vlmslim.json").exists():  # resumable: a finished checkpoint is kept
                prune_checkpoint(base, ckpt, _config(comp, criterion, allocation, calib_dir, args))
            summary = bench(str(ckpt), str(eval_dir), str(res), name=name, batch_size=20, bootstrap=1000, seed=0,
                            energy=False, bertscore_model=None, progress=False,
                            baseline=None if res == baseline else str(baseline))
            manifest = json.loads((ckpt / "vlmslim.json").read_text())
            rows.append(_row(name, comp, criterion, allocation, manifest, summary))
            if recover_steps:
                rows[-1]["recovered"] = _recovered(root, name, ckpt, eval_dir, train_dir, recover_steps,
                                                   baseline=root / "results" / f"{comp.name}-{comp.weight_criterion}-uniform-kd")
            logger.info("%s: CIDEr-D %.3f, kept %s", name, rows[-1]["cider"], rows[-1]["kept_per_layer"])
        params = {r["params_language"] for r in rows if r["component"] == comp.name}
        if len(params) != 1:
            raise SystemExit(f"{comp.name}: runs differ in parameter count {sorted(params)}; not a fair comparison")
    meta = {"date": dt.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
            "n": n, "calibration_n": calibration_n, "calibration_seed": calibration_seed, "round_to": round_to,
            "max_layer_ratio": max_layer_ratio, "recover_steps": recover_steps,
            "command": "python -m studies.pruning_allocation --out " + str(out)}
    write_json(Path(results + ".json"), {"meta": meta, "rows": rows})
    Path(results + ".md").write_text(_markdown(rows, meta) + "\n")
    click.echo(_markdown(rows, meta))


def _recovered(root: Path, name: str, ckpt: Path, eval_dir: Path, train_dir: Path, steps: int, baseline: Path) -> dict:
    """Recover `ckpt` toward the demo (the demo's recovery settings) and bench it; the CIDEr-D row."""
    out, res = root / "checkpoints" / f"{name}-kd", root / "results" / f"{name}-kd"
    if not (out / "vlmslim.json").exists():
        recover_checkpoint(str(ckpt), "demo", str(train_dir), str(out),
                           RecoverConfig(method="kd", steps=steps, batch_size=16, lr=1e-3, heldout=(str(eval_dir),),
                                         cache_dir=str(root / "cache"), progress=False))
    summary = bench(str(out), str(eval_dir), str(res), name=f"{name}-kd", batch_size=20, bootstrap=1000, seed=0,
                    energy=False, bertscore_model=None, progress=False,
                    baseline=None if res == baseline else str(baseline))
    step = json.loads((out / "vlmslim.json").read_text())["steps"][-1]
    paired = (summary.get("paired_vs_baseline") or {}).get("differences", {}).get("cider")
    return {"cider": summary["metrics"]["cider"], "cider_ci": summary["ci"]["cider"], "delta_cider": paired,
            "seconds": step["seconds"], "final_losses": step["final_losses"]}


if __name__ == "__main__":
    main()
