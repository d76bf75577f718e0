"""Where a compiled decode step's time goes: GPU kernel time per token by category, LLaVA-1.5-7B shape.

    python -m studies.decode_profile --variants base,int4wo,fp8 --out-dir $OUT

For each variant (random weights, language model quantized where named), the compiled engine decodes
1 and then 1 + STEPS tokens after the 592-token prompt under `torch.profiler` (CUDA activity); the
difference of the two profiles, divided by STEPS, is one decode step with the prefill removed. Kernels
are grouped by name (`CATEGORIES`) and listed; "wall" is the engine's own decode ms/token from an
unprofiled run, so wall - kernel sum = time the GPU sat idle between kernels. Writes decode_profile.json.

`--bench-path` builds the model as `vlmslim bench --random-weights --engine compiled` does instead: plain
`generate` decodes first (the eager row), then the engine fuses the projections itself and decodes with
split-K attention (the bench's defaults). Use an unfused variant (`int4wo-bf16`).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from vlmslim.benchmarks.engine import CompiledDecoder
from vlmslim.benchmarks.random_weights import eager_decode
from vlmslim.inputs import synthetic_inputs
from studies.llava7b_gpu import SDPA, VARIANTS, build, set_decode_options

logger = logging.getLogger("decode_profile")

STEPS = 32
# first match wins; names as CUPTI reports them (cuBLAS, flash / efficient attention, inductor, ours)
CATEGORIES = (
    ("linear: vlmslim int4 / 8-bit GEMV", r"_int4_kernel|_w8_kernel|_fp8_kernel|int4_gemv_m1"),
    ("linear: tinygemm int4", r"tinygemm|int4pack|_weight_int4"),
    # before cuBLAS: fmha_cutlassF is attention; cuDNN's lean_reduction_kernel combines its SDPA's splits
    ("attention", r"flash|fmha|attention|sdpa|efficient|_split_attn_|cudnn::fusion::lean_reduction"),
    # before cuBLAS: inductor names its kernels after the ops they fuse ("..._int4_gemv_cuda_mean_...")
    ("inductor fused (norms, RoPE, SiLU*up, residuals, dequant)", r"^triton_"),
    ("linear: cuBLAS GEMV/GEMM", r"gemv|gemm|sm90_xmma|cutlass|Kernel2|splitKreduce|nvjet|xmma"),
    ("copies / cache writes / indexing", r"copy|index|scatter|memcpy|memset|fill|cat"),
    ("argmax / reductions", r"reduce|argmax|max"),
)


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return label
    return "other"


def kernel_times(decoder: CompiledDecoder, inputs: dict, tokens: int) -> tuple[dict[str, float], int]:
    """Total CUDA time (us) per kernel name over one `decode(inputs, tokens)` call, and the number of kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        decoder.decode(inputs, tokens, ignore_eos=True)
        torch.cuda.synchronize()
    times: dict[str, float] = defaultdict(float)
    count = 0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            times[e.name] += e.device_time
            count += 1
    return times, count


def profile_variant(name: str, bench_path: bool = False) -> dict:
    torch._dynamo.reset()
    model = build(name)
    inputs = {k: v.cuda() for k, v in synthetic_inputs(model, 1, 16, 0).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    length = inputs["input_ids"].shape[1]
    if bench_path:  # as the bench's eager row: warm-up plus one timed-length generate
        eager_decode(model, inputs, 4, torch.device("cuda"))
        eager_decode(model, inputs, STEPS + 1, torch.device("cuda"))
    # build() fused the "-fused" variants; on the bench path the engine fuses, with the bench's default attention
    dec = CompiledDecoder(model, 1, length + STEPS + 8, fuse=bench_path,
                          attention="split" if bench_path else VARIANTS[name].attention)
    for _ in range(2):
        dec.decode(inputs, STEPS + 1, ignore_eos=True)  # compile, record the CUDA graphs
    walls = []
    for _ in range(3):
        r = dec.decode(inputs, STEPS + 1, ignore_eos=True)
        walls.append(1000 * r.decode_s / r.decode_steps)
    short, short_count = kernel_times(dec, inputs, 1)
    long, long_count = kernel_times(dec, inputs, STEPS + 1)
    per_step = {k: (long.get(k, 0.0) - short.get(k, 0.0)) / STEPS for k in long}
    per_step = {k: v for k, v in per_step.items() if v > 0.05}  # us; drop noise
    cats: dict[str, float] = defaultdict(float)
    for k, v in per_step.items():
        cats[category(k)] += v
    total_us = sum(per_step.values())
    top = sorted(per_step.items(), key=lambda kv: -kv[1])[:25]
    row = {"variant": name, "bench_path": bench_path, "compile_stats": dec.compile_stats,
           "wall_ms_per_token": statistics.median(walls), "kernel_ms_per_token": total_us / 1e3,
           "idle_ms_per_token": statistics.median(walls) - total_us / 1e3,
           "kernels_per_token": (long_count - short_count) / STEPS,  # GPU activities per step: a gap after each
           "categories_ms": {k: round(v / 1e3, 4) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
           "top_kernels_us": [[k[:120], round(v, 2), category(k)] for k, v in top]}
    logger.info("%s", json.dumps(row, indent=1))
    del model, dec
    torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="base,int4wo", help="Comma list of studies.llava7b_gpu variants.")
    ap.add_argument("--out-dir", type=Path, default=Path("."))
    ap.add_argument("--sdpa", default="default", choices=tuple(SDPA), help="As in studies.llava7b_gpu.")
    ap.add_argument("--coordinate-descent", action="store_true", help="As in studies.llava7b_gpu.")
    ap.add_argument("--bench-path", action="store_true",
                    help="Eager generate first, then the engine fuses (as `vlmslim bench --random-weights`).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    set_decode_options(args.sdpa, args.coordinate_descent)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "steps": STEPS, "bench_path": args.bench_path, "sdpa": args.sdpa, "coordinate_descent_tuning": args.coordinate_descent, "rows": []}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.variants.split(","):
        try:
            results["rows"].append(profile_variant(name, args.bench_path))
        except Exception as e:  # noqa: BLE001 - recorded; the next variant still runs
            logger.exception("%s failed", name)
            results["rows"].append({"variant": name, "error": f"{type(e).__name__}: {e}"[:300]})
        (args.out_dir / "decode_profile.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out_dir}/decode_profile.json")


if __name__ == "__main__":
    main()
