"""Decode attention kernels on this GPU: one query row per head over a static KV cache.

    python -m studies.decode_attention --out-dir $OUT

The LLaVA-1.5-7B language model's shape (32 heads of 128, MHA) at cache lengths 656 (a 592-token LLaVA
prompt + 64 answer tokens) and 2048, batch 1 and 8, bf16, a boolean mask (the last quarter of the cache not
yet written, as in a static cache). Per shape, the device time per call (CUDA-graph replays over copies of
the cache larger than 4x L2, as in a decode step where every layer's cache is new) of:
- SDPA with cuDNN attention, and with the memory-efficient kernel (what transformers' SDPA path runs);
- vlmslim.attention's split-K kernels with every launch configuration it tries, and the one it picks.
Each output is checked against `vlmslim.attention.reference`, before and after the timed graph replays.
The K + V bytes per call give the bandwidth.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from vlmslim import attention
from vlmslim.gemv import graph_time_ms

logger = logging.getLogger("studies.decode_attention")

HEADS, HEAD_DIM = 32, 128
SHAPES = ((1, 656), (1, 2048), (8, 656))  # (batch, cache length)


def caches_for(b: int, length: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    size = 2 * b * HEADS * length * HEAD_DIM * torch.finfo(dtype).bits // 8
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    n = min(32, max(2, -(-4 * l2 // size)))
    return [(torch.randn(b, HEADS, length, HEAD_DIM, device="cuda", dtype=dtype),
             torch.randn(b, HEADS, length, HEAD_DIM, device="cuda", dtype=dtype)) for _ in range(n)]


def study(dtype: torch.dtype) -> dict:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "dtype": str(dtype), "heads": HEADS, "head_dim": HEAD_DIM, "rows": []}
    for b, length in SHAPES:
        torch.manual_seed(0)
        q = torch.randn(b, HEADS, 1, HEAD_DIM, device="cuda", dtype=dtype)
        caches = caches_for(b, length, dtype)
        mask = torch.zeros(b, 1, 1, length, dtype=torch.bool, device="cuda")
        mask[..., : 3 * length // 4] = True
        scale = HEAD_DIM ** -0.5
        ref = attention.reference(q, *caches[0], mask, scale).float()
        kv_bytes = 2 * b * HEADS * length * HEAD_DIM * q.element_size()
        row = {"batch": b, "length": length, "kv_mb": kv_bytes / 2**20, "kernels": {}}

        def record(key, fn):
            try:
                out = fn(*caches[0]).float()
                err = float(((out - ref).norm() / ref.norm()).item())
                ms = graph_time_ms([lambda kv=kv: fn(*kv) for kv in caches])
                # again after the graph's replays
                out = fn(*caches[0]).float()
                err = max(err, float(((out - ref).norm() / ref.norm()).item()))
                row["kernels"][key] = {"us": round(ms * 1e3, 2), "gb_s": round(kv_bytes / ms / 1e6, 1), "rel_err": err}
            except RuntimeError as e:  # a backend this GPU / shape does not take
                row["kernels"][key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}

        for name, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)):
            def sdpa(k, v, backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
            record(name, sdpa)
        for cfg in attention.CONFIGS:
            record(f"split {cfg.block}x{cfg.per_sm}/SM w{cfg.warps}",
                   lambda k, v, cfg=cfg: attention._split_attention(q, k, v, mask, scale, cfg.per_sm * sms, cfg))
        attention._BEST.clear()
        record("split tuned", lambda k, v: attention.tuned_attention(q, k, v, mask, scale))
        row["picked"] = str(next(iter(attention._BEST.values()), None))
        results["rows"].append(row)
        logger.info("%s", json.dumps(row))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("."))
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = study(getattr(torch, args.dtype))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "decode_attention.json").write_text(json.dumps(results, indent=2))
    logger.info("wrote %s", args.out_dir / "decode_attention.json")


if __name__ == "__main__":
    main()
