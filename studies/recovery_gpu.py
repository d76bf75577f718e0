"""Can one GPU recover a pruned LLaVA-1.5-7B? Tokens/s and peak memory of `kd` and `lora-kd` steps.

    python -m studies.recovery_gpu --out docs/results/recovery_gpu.json              # one H200, bf16
    python -m studies.recovery_gpu --smoke --out /tmp/recovery_gpu_smoke.json        # tiny config, CPU

Architecture only: the teacher is LLaVA-1.5-7B's shape with random bf16 weights
(`build_random_model('llava-1.5-7b')`), the student the same model pruned with `vlmslim.prune` (GLU 30 %
+ heads 25 %, weight criteria); inputs are `synthetic_inputs` (576 image tokens + text) of `--seq-len`
tokens, the last `--answer-tokens` of which play the teacher's answer. Each method runs `--warmup`
untimed steps, then `--steps` timed ones of the library's own `train_step` (teacher in inference mode,
KD on the answer positions, AdamW), each synchronised. Reported per method: median step seconds,
tokens/s (batch x seq-len per step), peak allocated / reserved memory, trainable parameters, and the
projected wall time of one epoch over `--images` images (5 % of COCO train ~ 6k) — the teacher's answers
(generation) not included. Quality means nothing here and is not measured.
"""

from __future__ import annotations

import gc
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import click
import torch

from vlmslim.census import census
from vlmslim.inputs import synthetic_inputs
from vlmslim.loading import build_random_model, load_arch_config
from vlmslim.pruning import PruneConfig, prune
from vlmslim.recovery import METHODS, RecoverConfig, train_step
from vlmslim.recovery.batches import Batch
from vlmslim.recovery.methods import trainable

logger = logging.getLogger("recovery_gpu")
SMOKE_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny-llava.json"


def make_batch(model, batch_size: int, seq_len: int, answer_tokens: int, seed: int) -> Batch:
    """`batch_size` synthetic sequences of `seq_len` tokens; the loss reads the last `answer_tokens`."""
    from vlmslim.families import get_family

    n_img = get_family(model).image_tokens(model.config)
    if seq_len <= n_img + answer_tokens:
        raise click.BadParameter(f"--seq-len must exceed the {n_img} image tokens + --answer-tokens")
    inputs = synthetic_inputs(model, batch_size=batch_size, prompt_len=seq_len - n_img, seed=seed)
    keep = torch.arange(seq_len - answer_tokens - 1, seq_len - 1)  # positions predicting the answer
    mask = torch.ones(batch_size, answer_tokens, dtype=torch.bool)
    targets = inputs["input_ids"][:, keep + 1]
    return Batch(inputs, keep, mask, targets, batch_size * seq_len)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(method: str, student_factory, teacher, batch: Batch, args: dict) -> dict:
    device = torch.device(args["device"])
    student = student_factory()
    cfg = RecoverConfig(method=method, steps=args["steps"] + args["warmup"], batch_size=batch.inputs["input_ids"].shape[0],
                        lr=1e-5, lora_rank=args["lora_rank"], gradient_checkpointing=args["gradient_checkpointing"],
                        device=args["device"], progress=False)
    torch.manual_seed(0)
    model = METHODS[method].prepare(student, cfg)
    if cfg.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = trainable(model)
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr)
    batch = batch.to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for i in range(args["warmup"] + args["steps"]):
        sync(device)
        t0 = time.perf_counter()
        row = train_step(model, teacher, batch, cfg, opt, [])
        sync(device)
        if i >= args["warmup"]:
            times.append(time.perf_counter() - t0)
            losses.append(row["loss"])
    step_s = statistics.median(times)
    out = {"method": method, "step_s_median": step_s, "step_s": times, "tokens_per_s": batch.tokens / step_s,
           "losses": losses, "trainable_params": sum(p.numel() for p in params.values()),
           "student_params": census(student)["total_params"],
           "projected_epoch_s": args["images"] / batch.inputs["input_ids"].shape[0] * step_s}
    if device.type == "cuda":
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    del model, student, opt, params
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSON results file.")
@click.option("--config", "arch", default="llava-1.5-7b", show_default=True,
              help="Shipped config name or a config.json path (tiny ones make a CPU smoke run).")
@click.option("--smoke", is_flag=True, help=f"Tiny config on the CPU in float32: {SMOKE_CONFIG.name}, 2 steps.")
@click.option("--device", default="cuda", show_default=True)
@click.option("--dtype", default="bfloat16", show_default=True)
@click.option("--methods", default="kd,lora-kd", show_default=True)
@click.option("--glu", default=0.3, show_default=True)
@click.option("--heads", default=0.25, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--seq-len", default=600, show_default=True, help="Tokens per sequence (576 image tokens + text).")
@click.option("--answer-tokens", default=16, show_default=True,
              help="Positions the loss reads; 600 tokens leave 24 after the 7B shape's 576 image tokens.")
@click.option("--steps", default=5, show_default=True, help="Timed steps per method.")
@click.option("--warmup", default=2, show_default=True)
@click.option("--lora-rank", default=16, show_default=True)
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=False, show_default=True)
@click.option("--images", default=6000, show_default=True, help="Recovery set size for the projected epoch time.")
def main(out, arch, smoke, device, dtype, methods, glu, heads, batch_size, seq_len, answer_tokens, steps, warmup,
         lora_rank, gradient_checkpointing, images):
    """Time kd / lora-kd recovery steps on a pruned random-weight model; write JSON to --out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if smoke:
        arch, device, dtype, batch_size, steps, warmup = str(SMOKE_CONFIG), "cpu", "float32", 2, 2, 1
        seq_len, answer_tokens = min(seq_len, 40), min(answer_tokens, 8)
    args = dict(device=device, steps=steps, warmup=warmup, lora_rank=lora_rank,
                gradient_checkpointing=gradient_checkpointing, images=images)
    load_arch_config(arch)  # a bad name fails before anything is built
    teacher = build_random_model(arch, dtype=dtype, device=device, seed=0)
    prune_cfg = PruneConfig(glu=glu, heads=heads)

    def student_factory():
        model = build_random_model(arch, dtype=dtype, device=device, seed=0)  # the teacher's weights, rebuilt
        return prune(model, None, prune_cfg)[0]

    batch = make_batch(teacher, batch_size, seq_len, answer_tokens, seed=0)
    results = [measure(m, student_factory, teacher, batch, args) for m in methods.split(",")]
    for r in results:
        logger.info("%s: %.3f s/step, %.0f tokens/s, peak %s GiB, epoch of %d images ~ %.1f min", r["method"],
                    r["step_s_median"], r["tokens_per_s"], f"{r.get('peak_allocated_gib', float('nan')):.1f}", images,
                    r["projected_epoch_s"] / 60)
    record = {
        "date": time.strftime("%Y-%m-%d"), "config": arch, "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor(),
        "dtype": dtype, "torch": torch.__version__, "prune": prune_cfg.to_dict(), "batch_size": batch_size,
        "seq_len": seq_len, "answer_tokens": answer_tokens, "gradient_checkpointing": gradient_checkpointing,
        "teacher_params": census(teacher)["total_params"], "images": images, "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    click.echo(json.dumps({r["method"]: {"tokens_per_s": round(r["tokens_per_s"]),
                                         "peak_allocated_gib": r.get("peak_allocated_gib")} for r in results}))


if __name__ == "__main__":
    main()
