"""Device-map study: the LLaVA-1.5-7B shape on one GPU alone vs split between a small GPU budget and the CPU.

    python -m studies.device_map_gpu --out-dir $OUT                 # one GPU (the lead's run)
    python -m studies.device_map_gpu --out-dir /tmp/dm --smoke      # tiny config on the CPU (tests)

Random fp16 weights from configs/models/llava-1.5-7b.json, drawn on the GPU with one seed in both builds
(`build_random_model(..., device_map=...)` draws each tensor on the GPU, then moves it to its slot), so
the two models hold the same numbers. Synthetic inputs with LLaVA's 576 image tokens + 16 text tokens;
greedy decoding of 16 tokens with plain `generate` (`random_weights.eager_decode`): prefill s and decode
ms/token (median over repeats after a warm-up), peak allocated GPU memory, where the weights sit, and
whether the greedy tokens agree. Writes device_map_gpu.json and device_map_gpu.md in --out-dir.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import torch

from vlmslim.benchmarks.devices import main_device
from vlmslim.benchmarks.random_weights import eager_decode
from vlmslim.inputs import synthetic_inputs
from vlmslim.loading import build_random_model, model_devices, parse_max_memory, placement_summary
from vlmslim.testing import tiny_llava

logger = logging.getLogger("device_map_gpu")

CONFIG = "llava-1.5-7b"
NEW_TOKENS = 16
PROMPT_TOKENS = 16


def run(name: str, config: str, device: str, dtype: str, device_map: str | None, max_memory: str | None,
        repeats: int) -> tuple[dict, torch.Tensor]:
    """Build one placement, decode greedily; (row, tokens (1, NEW_TOKENS) on the CPU)."""
    t = time.perf_counter()
    model = build_random_model(config, dtype=dtype, device=device, seed=0, device_map=device_map,
                               max_memory=parse_max_memory(max_memory))
    build_s = time.perf_counter() - t
    dev = main_device(model)
    inputs = {k: v.to(dev) for k, v in synthetic_inputs(model, 1, PROMPT_TOKENS, 0).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    eager_decode(model, inputs, 2, dev)  # warm-up
    runs = [eager_decode(model, inputs, NEW_TOKENS, dev) for _ in range(repeats)]
    row = {"name": name, "device_map": device_map, "max_memory": max_memory, "devices": model_devices(model),
           "placement_mb": placement_summary(model), "build_s": round(build_s, 1),
           "prefill_s": statistics.median(r[1] for r in runs),
           "decode_ms_per_token": 1000 * statistics.median(r[2] for r in runs),
           "peak_allocated_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None,
           "repeats": repeats}
    tokens = runs[0][0].cpu()
    logger.info("%s", row)
    del model, runs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row, tokens


def study(args) -> dict:
    if args.smoke:  # the tiny LLaVA on the CPU: same code path, seconds
        config = str(Path(args.out_dir) / "tiny-llava.json")
        Path(config).write_text(json.dumps(tiny_llava()[0].config.to_dict()))
        device, dtype, limit = "cpu", "float32", "cpu=2GiB"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("this study needs a CUDA GPU (or --smoke for the CPU check)")
        config, device, dtype, limit = CONFIG, "cuda", "float16", f"0={args.gpu_gib}GiB,cpu={args.cpu_gib}GiB"
    alone, tokens_alone = run("gpu alone" if device == "cuda" else "one device", config, device, dtype, None, None,
                              args.repeats)
    split, tokens_split = run("device_map " + args.device_map, config, device, dtype, args.device_map, limit,
                              args.repeats)
    same = (tokens_alone == tokens_split).all(dim=0).long()
    return {
        "config": config if not args.smoke else "tiny-llava (smoke)", "smoke": args.smoke,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "new_tokens": NEW_TOKENS, "prompt": f"the config's image tokens + {PROMPT_TOKENS} text tokens, batch 1, greedy",
        "rows": [alone, split],
        "tokens_equal": bool(torch.equal(tokens_alone, tokens_split)),
        "tokens_matching_prefix": int(same.cumprod(0).sum()),
        "tokens": {"alone": tokens_alone.tolist(), "split": tokens_split.tolist()},
        "slowdown": split["decode_ms_per_token"] / alone["decode_ms_per_token"],
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def markdown(result: dict) -> str:
    lines = [f"Device map vs one device — {result['config']} on {result['device']}, {result['prompt']}, "
             f"{result['new_tokens']} new tokens.", "",
             "| run | max_memory | weights placed (MB) | prefill s | decode ms/token | peak GPU GB |",
             "|---|---|---|---:|---:|---:|"]
    for r in result["rows"]:
        placed = ", ".join(f"{d} {mb:.0f}" for d, mb in r["placement_mb"].items())
        peak = f"{r['peak_allocated_gb']:.1f}" if r["peak_allocated_gb"] is not None else "n/a"
        lines.append(f"| {r['name']} | {r['max_memory'] or '-'} | {placed} | {r['prefill_s']:.3f} | "
                     f"{r['decode_ms_per_token']:.1f} | {peak} |")
    lines += ["", f"Greedy tokens equal: {result['tokens_equal']} ({result['tokens_matching_prefix']}/"
              f"{result['new_tokens']} matching prefix); decode time split / alone: {result['slowdown']:.2f}x."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny LLaVA on the CPU (checks the code path only)")
    p.add_argument("--device-map", default="sequential", choices=["auto", "balanced", "sequential"])
    p.add_argument("--gpu-gib", type=float, default=8, help="GPU 0's budget for the split run")
    p.add_argument("--cpu-gib", type=float, default=100)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = study(args)
    (out / "device_map_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "device_map_gpu.md").write_text(markdown(result))
    logger.info("wrote %s and %s\n%s", out / "device_map_gpu.json", out / "device_map_gpu.md", markdown(result))


if __name__ == "__main__":
    main()
