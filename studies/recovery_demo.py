"""How far `vlmslim recover` brings the demo's broken prunes back, and at what cost (CPU).

    python -m studies.recovery_demo --out /tmp/recovery-demo --out-json docs/results/recovery_demo.json

Held-out split = the demo's: `vlmslim data synthetic --n 100 --seed 0` (DemoConfig.n / .seed). Recovery
data = another synthetic seed (default 1), checked disjoint by image content (`--heldout`). Each variant
is pruned like the demo prunes it (drop1 on the demo's calibration set: seed 7, 32 scenes), recovered
with each method, and benchmarked like the demo benchmarks (caption task, batch 20, no BERTScore, no
energy, 1000 bootstrap resamples, paired against the base run). Reported per run: CIDEr-D with its CI,
the paired difference to the base with its CI, the fraction of the base CIDEr-D kept, and the recovery's
wall and CPU seconds (the teacher answers are generated once, by the first run, and timed apart).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import time
from pathlib import Path

import click
import torch

from vlmslim.benchmarks import bench
from vlmslim.data import make_synthetic
from vlmslim.pruning import PruneConfig, prune_checkpoint
from vlmslim.loading import load_model, resolve_source
from vlmslim.recovery import RecoverConfig, recover_checkpoint
from vlmslim.recovery.step import recovery_data, teacher_answers

logger = logging.getLogger(__name__)

PRUNES = {  # as vlmslim.demo.pipeline.VARIANTS prunes them
    "heads25": {"heads": 0.25},
    "drop1": {"drop_layers": 1},
    "glu80": {"glu": 0.8, "importance": "maw"},
}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ensure_data(root: Path, eval_n: int, train_n: int, train_seed: int) -> dict[str, Path]:
    paths = {"eval": root / "data" / "eval", "calibration": root / "data" / "calibration",
             "train": root / "data" / f"train-s{train_seed}-n{train_n}"}
    for name, (n, seed) in {"eval": (eval_n, 0), "calibration": (32, 7), "train": (train_n, train_seed)}.items():
        if not (paths[name] / "meta.json").exists():
            make_synthetic(paths[name], n=n, seed=seed)
    return paths


def ensure_pruned(root: Path, variant: str, calibration: Path) -> Path:
    out = root / "checkpoints" / variant
    if not (out / "vlmslim.json").exists():
        options = dict(PRUNES[variant])
        if "drop_layers" in options:
            options["calibration"] = str(calibration)
        prune_checkpoint("demo", out, PruneConfig(**options))
    return out


def cache_teacher_answers(train: Path, cfg: RecoverConfig) -> float:
    """Generate (or find) the demo teacher's answers on the recovery data once; wall seconds."""
    t0 = time.perf_counter()
    teacher, processor = load_model("demo")
    dataset, _, record = recovery_data(train, ())
    teacher_answers(teacher, processor, resolve_source("demo"), dataset, record, cfg)
    return round(time.perf_counter() - t0, 1)


def bench_row(model: str, data: Path, out: Path, baseline: Path | None, name: str) -> dict:
    summary = bench(model, str(data), str(out), name=name, batch_size=20, bertscore_model=None, energy=False,
                    bootstrap=1000, seed=0, progress=False, baseline=str(baseline) if baseline else None)
    row = {"cider": summary["metrics"]["cider"], "cider_ci": summary["ci"]["cider"]}
    paired = summary.get("paired_vs_baseline")
    if paired:
        d = paired["differences"]["cider"]
        row["paired_diff"] = [d["diff"], d["lo"], d["hi"]]
    return row


@click.command()
@click.option("--out", "root", type=click.Path(path_type=Path), required=True, help="Working dir (data, checkpoints, results).")
@click.option("--out-json", type=click.Path(path_type=Path), default=None, help="Where to write the table as JSON.")
@click.option("--variants", default="heads25,drop1,glu80", show_default=True)
@click.option("--methods", default="kd,lora-kd,projector", show_default=True)
@click.option("--steps", default=60, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=1e-3, show_default=True, help="kd and projector (lora-kd: --lora-lr).")
@click.option("--lora-lr", default=3e-3, show_default=True)
@click.option("--lora-rank", default=16, show_default=True)
@click.option("--train-n", default=1000, show_default=True)
@click.option("--train-seed", default=1, show_default=True)
@click.option("--eval-n", default=100, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
def main(root, out_json, variants, methods, steps, batch_size, lr, lora_lr, lora_rank, train_n, train_seed, eval_n,
         threads):
    """Prune -> recover -> bench the demo's broken variants; print and save the table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("transformers", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    root.mkdir(parents=True, exist_ok=True)
    data = ensure_data(root, eval_n, train_n, train_seed)
    base_res = root / "results" / "base"
    rows = [{"variant": "base", "method": None, **bench_row("demo", data["eval"], base_res, None, "base")}]
    base = rows[0]["cider"]
    targets_s = cache_teacher_answers(data["train"], RecoverConfig(batch_size=batch_size, cache_dir=str(root / "cache")))
    tag = f"n{train_n}-s{train_seed}-steps{steps}-b{batch_size}"  # recoveries of other settings live apart
    for variant in variants.split(","):
        pruned = ensure_pruned(root, variant, data["calibration"])
        rows.append({"variant": variant, "method": None,
                     **bench_row(str(pruned), data["eval"], root / "results" / variant, base_res, variant)})
        for method in methods.split(","):
            name = f"{variant}+{method}"
            ckpt = root / "checkpoints" / tag / name
            cfg = RecoverConfig(method=method, steps=steps, batch_size=batch_size,
                                lr=lora_lr if method == "lora-kd" else lr, lora_rank=lora_rank,
                                heldout=(str(data["eval"]),), cache_dir=str(root / "cache"), progress=False)
            w0, c0 = time.perf_counter(), cpu_seconds()
            _, manifest = recover_checkpoint(str(pruned), "demo", data["train"], ckpt, cfg, overwrite=True)
            wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
            step = manifest["steps"][-1]
            row = {"variant": variant, "method": method, "recover_wall_s": round(wall, 1), "recover_cpu_s": round(cpu, 1),
                   "train_s": step["seconds"], "tokens_per_s": step["tokens_per_s"], "probe": step["probe"],
                   "params": step["params"]}
            row.update(bench_row(str(ckpt), data["eval"], root / "results" / tag / name, base_res, name))
            rows.append(row)
            logger.info("%s: CIDEr-D %.3f (%.1f %% of base) in %.0f s wall / %.0f s CPU", name, row["cider"],
                        100 * row["cider"] / base, wall, cpu)
    for r in rows:
        r["fraction_of_base"] = r["cider"] / base
    record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
              "cpus": os.cpu_count(), "torch_threads": threads, "load_average": os.getloadavg(),
              "torch": torch.__version__, "train": {"n": train_n, "seed": train_seed},
              "eval": {"n": eval_n, "seed": 0}, "teacher_answers_s": targets_s, "rows": rows}
    if out_json:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(record, indent=2) + "\n")
    click.echo(table(record))


def table(record: dict) -> str:
    lines = ["| variant | method | CIDEr-D [95 % CI] | vs base (paired) [95 % CI] | of base | recover wall / CPU s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in record["rows"]:
        ci = r["cider_ci"]
        paired = r.get("paired_diff")
        lines.append(
            f"| {r['variant']} | {r['method'] or '-'} | {r['cider']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
            + (f"{paired[0]:+.3f} [{paired[1]:+.3f}, {paired[2]:+.3f}]" if paired else "-")
            + f" | {100 * r['fraction_of_base']:.1f} % | "
            + (f"{r['recover_wall_s']:.0f} / {r['recover_cpu_s']:.0f}" if r.get("method") else "-") + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
