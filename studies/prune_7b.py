"""Wall time and peak memory of `vlmslim.pruning.prune` on a LLaVA-1.5-7B-shaped model (random bf16 weights).

    python -m studies.prune_7b --device cpu  --out-json docs/results/prune_7b_cpu.json
    python -m studies.prune_7b --device cuda --out-json docs/results/prune_7b_cuda.json [--save /tmp/p7b]

The model is built from configs/models/llava-1.5-7b.json without allocating fp32 weights: an empty (meta)
skeleton, then each parameter created directly on the device in bf16 and filled with N(0, 0.02) (norm
weights 1, biases 0). Pruning uses weight criteria (maw, o_norm), so no processor or data is needed.
Reported: build / prune / save seconds, peak RSS (whole process and during prune, sampled every 20 ms),
GPU peak allocated during prune, parameters per component before/after.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import threading
import time
from pathlib import Path

import click
import psutil
import torch

from vlmslim.benchmarks.devices import sync as vlmslim_sync
from vlmslim.loading import CONFIG_DIR, build_random_model

ROOT = Path(__file__).resolve().parents[1]  # the checkout (outputs default below it)
GiB = 1024**3


class RssPeak:
    """Peak resident memory of this process while the context is open (sampled)."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._proc = psutil.Process()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.every)

    def __enter__(self):
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def sync(device: str) -> None:
    vlmslim_sync(torch.device(device))


@torch.no_grad()
def build(config_path: Path, device: str, dtype: torch.dtype, seed: int):
    """The architecture with random weights made on `device` (no fp32 CPU copy): vlmslim's own builder."""
    model = build_random_model(str(config_path), dtype=dtype, device=device, seed=seed)
    assert {p.dtype for p in model.parameters()} == {dtype}
    return model


def components(model) -> dict[str, int]:
    from vlmslim.census import census

    return {k: v["params"] for k, v in census(model)["components"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    ap.add_argument("--out-json", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=CONFIG_DIR / "llava-1.5-7b.json")
    ap.add_argument("--glu", type=float, default=0.3)
    ap.add_argument("--heads", type=float, default=0.25)
    ap.add_argument("--head-mode", default="groups")
    ap.add_argument("--save", type=Path, default=None, help="Also time save_checkpoint to this directory (~10 GB).")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.WARNING)

    from vlmslim.checkpoint import save_checkpoint
    from vlmslim.manifest import new_manifest
    from vlmslim.pruning import PruneConfig, prune, record_step
    from vlmslim.shapes import architecture_of

    torch.manual_seed(args.seed)
    cuda = args.device.startswith("cuda")
    t0 = time.perf_counter()
    model = build(args.config, args.device, torch.bfloat16, args.seed)
    sync(args.device)
    build_s = time.perf_counter() - t0
    before = components(model)
    rss_before = psutil.Process().memory_info().rss
    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
        gpu_before = torch.cuda.memory_allocated(args.device)
    config = PruneConfig(glu=args.glu, heads=args.heads, head_mode=args.head_mode)
    with RssPeak() as rss:
        t0 = time.perf_counter()
        model, step = prune(model, None, config)
        sync(args.device)
        prune_s = time.perf_counter() - t0
    result = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if cuda else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "dtype": "bfloat16",
        "prune_config": config.to_dict(),
        "build_s": round(build_s, 2),
        "prune_s": round(prune_s, 2),
        "rss_before_prune_gib": round(rss_before / GiB, 2),
        "rss_peak_during_prune_gib": round(rss.peak / GiB, 2),
        "stock_loadable": step["stock_loadable"],
        "params_before": before,
        "params_after": components(model),
        "layer0_after": architecture_of(model)["text_layers"][0],
    }
    if cuda:
        result["gpu_allocated_before_prune_gib"] = round(gpu_before / GiB, 2)
        result["gpu_peak_allocated_during_prune_gib"] = round(torch.cuda.max_memory_allocated(args.device) / GiB, 2)
    if args.save is not None:
        manifest = record_step(new_manifest(str(args.config), model.config), model, step)
        t0 = time.perf_counter()
        save_checkpoint(model, None, args.save, manifest, overwrite=True)
        result["save_s"] = round(time.perf_counter() - t0, 2)
    result["rss_peak_process_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB, 2)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
