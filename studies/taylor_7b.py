"""What does `--importance taylor` cost on LLaVA-1.5-7B's shape? Seconds and peak memory per calibration sample.

    python -m studies.taylor_7b --device cuda --out docs/results/taylor_7b_cuda.json
    python -m studies.taylor_7b --device cpu --dtype float32 --text-layers 1,2 --out docs/results/taylor_7b_cpu.json
    python -m studies.taylor_7b --smoke --out /tmp/taylor_smoke.json          # tiny config, CPU

Architecture only: random weights (`build_random_model('llava-1.5-7b')`, bf16 by default). On a CPU the full
32-layer model is ~30 GB with its fp32 activations and minutes per sample, so `--text-layers 1,2` measures
the same shape (full widths, full CLIP tower) at 1 and 2 decoder layers: the difference is the cost of one
decoder layer, and `extrapolated_full_depth` = the 1-layer run + 31 x that difference (said so in the JSON). Each calibration sample is
`synthetic_inputs` (576 image tokens + text) of `--seq-len` tokens whose last `--answer-tokens` play the
teacher's greedy answer (labels; -100 elsewhere), i.e. the `TeacherBatch` that `vlmslim prune` builds.
Timed: the library's own `collect_taylor` (one forward + backward per sample over every GLU and attention
weight, gradients reduced to per-row vectors as they arrive), `--warmup` untimed samples first, then
`--samples` timed ones, each synchronised. Not timed: the teacher's answers (one greedy `generate` per
sample, the same cost as a benchmark pass). Reported: seconds per sample (median), peak memory during the
timed pass (GPU allocated / reserved; process RSS, sampled every 20 ms) next to the model's own bytes.
"""

from __future__ import annotations

import json
import platform
import tempfile
import statistics
import time
from pathlib import Path

import click
import psutil
import torch

from vlmslim.families import get_family
from vlmslim.inputs import synthetic_inputs
from vlmslim.loading import build_random_model, load_arch_config
from vlmslim.pruning.calibrate import TeacherBatch, collect_taylor

from studies.prune_7b import RssPeak

SMOKE_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny-llava.json"
GiB = 1024**3


def teacher_batch(model, seq_len: int, answer_tokens: int, seed: int) -> TeacherBatch:
    n_img = get_family(model).image_tokens(model.config)
    if seq_len <= n_img + answer_tokens:
        raise click.BadParameter(f"--seq-len must exceed the {n_img} image tokens + --answer-tokens")
    inputs = synthetic_inputs(model, batch_size=1, prompt_len=seq_len - n_img, seed=seed)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, -answer_tokens:] = inputs["input_ids"][:, -answer_tokens:]
    return TeacherBatch(inputs, labels, answer_tokens)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--arch", default="llava-1.5-7b", show_default=True)
@click.option("--device", default="cuda", show_default=True)
@click.option("--seq-len", default=600, show_default=True)
@click.option("--answer-tokens", default=16, show_default=True)
@click.option("--samples", default=4, show_default=True)
@click.option("--warmup", default=1, show_default=True)
@click.option("--dtype", default="bfloat16", show_default=True, help="float32 on a CPU without fast bf16.")
@click.option("--text-layers", default="", help="Comma list of decoder depths to build (default: the config's).")
@click.option("--smoke", is_flag=True, help="The tiny config on a CPU (seq-len 40, answer 4, 2 samples).")
def main(out, arch, device, seq_len, answer_tokens, samples, warmup, dtype, text_layers, smoke):
    if smoke:
        arch, device, seq_len, answer_tokens, samples = str(SMOKE_CONFIG), "cpu", 40, 4, 2
    depths = [int(d) for d in text_layers.split(",") if d.strip()]
    if not depths:
        record = measure(arch, device, seq_len, answer_tokens, samples, warmup, dtype)
    else:
        runs = {d: measure(arch, device, seq_len, answer_tokens, samples, warmup, dtype, text_layers=d) for d in depths}
        record = {"runs": [runs[d] for d in depths]}
        if len(depths) >= 2:
            lo, hi = min(depths), max(depths)
            per_layer = (runs[hi]["s_per_sample_median"] - runs[lo]["s_per_sample_median"]) / (hi - lo)
            rss_layer = (runs[hi]["rss_peak_during_gib"] - runs[lo]["rss_peak_during_gib"]) / (hi - lo)
            full = runs[lo]["full_text_layers"]
            record["per_decoder_layer"] = {"s_per_sample": round(per_layer, 3), "rss_gib": round(rss_layer, 3)}
            record["extrapolated_full_depth"] = {
                "how": f"the {lo}-layer run + {full - lo} x the per-layer difference (not measured at full depth)",
                "s_per_sample": round(runs[lo]["s_per_sample_median"] + (full - lo) * per_layer, 1),
                "rss_peak_gib": round(runs[lo]["rss_peak_during_gib"] + (full - lo) * rss_layer, 2)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    click.echo(json.dumps(record, indent=2))


def measure(arch: str, device: str, seq_len: int, answer_tokens: int, samples: int, warmup: int, dtype: str,
            text_layers: int | None = None) -> dict:
    full_layers = None
    if text_layers is not None:  # the same shape at another decoder depth, as a temporary config file
        config = load_arch_config(arch)
        full_layers = config.text_config.num_hidden_layers
        config.text_config.num_hidden_layers = text_layers
        tmp = Path(tempfile.mkdtemp())
        config.save_pretrained(tmp)
        arch = str(tmp / "config.json")
    dev = torch.device(device)
    t0 = time.perf_counter()
    model = build_random_model(arch, dtype=dtype, device=device, seed=0)
    build_s = time.perf_counter() - t0
    family = get_family(model)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    batches = [teacher_batch(model, seq_len, answer_tokens, seed=i) for i in range(warmup + samples)]
    batches = [TeacherBatch({k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in b.inputs.items()},
                            b.labels.to(dev), b.answer_tokens) for b in batches]
    collect_taylor(model, family, batches[:warmup], neurons=True, heads=True)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    rss_before = psutil.Process().memory_info().rss
    with RssPeak() as rss:
        for b in batches[warmup:]:
            sync(dev)
            t = time.perf_counter()
            glu, attn = collect_taylor(model, family, [b], neurons=True, heads=True)
            sync(dev)
            times.append(time.perf_counter() - t)
    assert all(torch.isfinite(s.gate).all() and s.gate.sum() > 0 for s in glu.values())
    record = {
        "what": f"collect_taylor (GLU + attention, one sample per forward+backward), random {dtype} weights",
        "arch": arch, "device": device, "text_layers": text_layers, "full_text_layers": full_layers,
        "date": time.strftime("%Y-%m-%d"),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "cpu_threads": torch.get_num_threads(), "seq_len": seq_len, "answer_tokens": answer_tokens,
        "params": sum(p.numel() for p in model.parameters()), "model_gib": round(model_bytes / GiB, 2),
        "build_s": round(build_s, 2), "samples_timed": samples, "warmup": warmup,
        "s_per_sample": [round(t, 3) for t in times], "s_per_sample_median": round(statistics.median(times), 3),
    }
    if dev.type == "cuda":
        record["gpu_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(dev) / GiB, 2)
        record["gpu_peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(dev) / GiB, 2)
        record["gpu_peak_over_model_gib"] = round(record["gpu_peak_allocated_gib"] - record["model_gib"], 2)
    record["rss_before_gib"] = round(rss_before / GiB, 2)
    record["rss_peak_during_gib"] = round(rss.peak / GiB, 2)
    del model, batches
    return record


if __name__ == "__main__":
    main()
