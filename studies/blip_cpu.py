"""CPU captioning latency of BLIP-base, fp32 vs int8 (seed 003's claim, measured): issue 20, CPU part.

    python -m studies.blip_cpu --out docs/results/blip_cpu.json

Architecture only: `random:blip-image-captioning-base` (the public BLIP-base shape, random weights), so the
numbers are speed and size, never quality. One fixed 384-px image (random pixels, seed 0), batch 1, the
caption prefix "a picture of" ([DEC] a picture of, bert-base-uncased ids), greedy, exactly `--new-tokens`
new tokens (min_new_tokens = max_new_tokens: EOS cannot end a variant early, so all generate the same
number of tokens). Per-image latency = one whole `model.generate` call (vision tower + decode).

Variants, each a copy of the same fp32 model:
- fp32;
- `quantize_dynamic`: `torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, torch.qint8)` on the whole
  model, as seed 003 did (every Linear, the tied LM head included: it gets its own int8 copy);
- `int8dq`: vlmslim's `int8dq` recipe (`vlmslim.int8dq`: the same x86 dynamic kernel, as a recipe whose
  checkpoints save and reload) with `--target all`: every Linear but the LM head, which is tied to the
  word embeddings (vlmslim refuses to quantize a tied weight; quantize_dynamic gives it an int8 copy);
- `int8dq (language)`: the CLI default target (text decoder only);
- `bnb int8 (all)`: vlmslim's `int8` recipe (bitsandbytes LLM.int8) with `--target all` (every Linear but
  the LM head).

Timing: `--warmup` untimed rounds, then `--runs` timed rounds; every round runs all variants in turn
(ABCD ABCD ...), so the machine's load (2 shared cores) affects them alike. Median and min per variant.
Bytes = the `torch.save` size of the variant's state_dict (shared storages once), the same measure for all.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from vlmslim.loading import build_random_model
from vlmslim.manifest import git_revision, library_versions, now_utc
from vlmslim.quantization import QuantSpec, make_recipe, quantize_model

logger = logging.getLogger("studies.blip_cpu")

CONFIG = "blip-image-captioning-base"
PROMPT_IDS = [30522, 1037, 3861, 1997, 102]  # [DEC] a picture of [SEP] (bert-base-uncased; [SEP] is dropped)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def state_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def build_variants(base: nn.Module) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """{name: model} and {name: why it is missing}."""
    variants = {"fp32": base}
    skipped = {}
    variants["quantize_dynamic"] = torch.ao.quantization.quantize_dynamic(copy.deepcopy(base), {nn.Linear},
                                                                          dtype=torch.qint8)
    for name, recipe, target in (("int8dq (all)", "int8dq", "all"), ("int8dq (language)", "int8dq", "language"),
                                 ("bnb int8 (all)", "int8", "all")):
        model = copy.deepcopy(base)
        quantize_model(model, QuantSpec(make_recipe(recipe), target=target), device="cpu")
        variants[name] = model
    return variants, skipped


@torch.inference_mode()
def caption(model: nn.Module, inputs: dict, n: int) -> torch.Tensor:
    return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    ap.add_argument("--runs", type=int, default=5, help="timed rounds (>= 5)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the issue's 2 cores)")
    ap.add_argument("--config", default=CONFIG, help="shipped config name or config.json path (smoke runs)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.runs < 5:
        ap.error("--runs must be >= 5")
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    base = build_random_model(args.config, dtype="float32", device="cpu", seed=0)
    size = base.config.vision_config.image_size
    g = torch.Generator().manual_seed(0)
    ids = [i % base.config.text_config.vocab_size for i in PROMPT_IDS]  # a smaller smoke-test vocabulary wraps
    inputs = {"pixel_values": torch.randn(1, 3, size, size, generator=g),
              "input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    variants, skipped = build_variants(base)
    for name, why in skipped.items():
        logger.warning("%s skipped: %s", name, why)

    tokens: dict[str, torch.Tensor] = {}
    for name in list(variants):  # the first call per variant also checks it runs
        tokens[name] = caption(variants[name], inputs, args.new_tokens)
    reference = tokens["fp32"]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.warmup + args.runs):
        for name, model in variants.items():
            t0 = time.perf_counter()
            out = caption(model, inputs, args.new_tokens)
            dt = time.perf_counter() - t0
            assert out.shape == reference.shape, (name, out.shape)  # same number of tokens for every variant
            if r >= args.warmup:
                times[name].append(dt)
        logger.info("round %d/%d: %s", r + 1, args.warmup + args.runs,
                    ", ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items() if t))

    fp32_median = statistics.median(times["fp32"])
    rows = []
    for name, ts in times.items():
        new = tokens[name][0, -args.new_tokens:]
        rows.append({"variant": name, "latency_s_median": statistics.median(ts), "latency_s_min": min(ts),
                     "latency_s_runs": ts, "speedup_vs_fp32": fp32_median / statistics.median(ts),
                     "bytes": state_bytes(variants[name]),
                     "tokens_equal_to_fp32": int((new == reference[0, -args.new_tokens:]).sum())})
    result = {
        "study": "blip_cpu", "config": args.config, "weights": "random (architecture only)",
        "image_px": size, "batch_size": 1, "new_tokens": args.new_tokens, "runs": args.runs, "warmup": args.warmup,
        "order": "interleaved: every round runs all variants in turn",
        "torch_threads": torch.get_num_threads(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "versions": library_versions(), "vlmslim_git": git_revision(),
        "date": now_utc(), "load_average_1_5_15min": {"start": load_before, "end": os.getloadavg()},
        "fp32_bytes": state_bytes(base), "rows": rows, "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        logger.info("%-20s %.3f s/image (x%.2f vs fp32), %.1f MB, %d/%d tokens as fp32", row["variant"],
                    row["latency_s_median"], row["speedup_vs_fp32"], row["bytes"] / 1e6, row["tokens_equal_to_fp32"],
                    args.new_tokens)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
