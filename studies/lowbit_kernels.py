"""Which low-bit GEMV kernels are fast on this GPU? Candidates for a fast weight-only quantization backend.

    python -m studies.lowbit_kernels --out-dir $OUT

Decode at batch 1-8 is a matrix-vector product per Linear: its time is the weight bytes read. Per
LLaVA-1.5-7B language-model shape (q/k/v/o 4096x4096, gate/up 11008x4096, down 4096x11008, lm_head
32064x4096) and M in (1, 8) rows, each candidate's kernel time (CUDA-graph replays of 40 calls, `timed`)
and the weight bandwidth it reaches:
- fp16 / bf16 `F.linear` (cuBLAS): the reference;
- int8 weight-only `torch._weight_int8pack_mm` (ATen), where this torch has a CUDA kernel;
- int4 weight-only `torch._weight_int4pack_mm` (ATen tinygemm; bf16, group size 128);
- fp8 e4m3 `torch._scaled_mm` with row-wise scales (Hopper), M padded to 16;
- int4 and fp8 weight-only through vlmslim's Triton GEMVs (`vlmslim.gemv`, tuned per shape on first use);
- int4 weight-only through gemlite's GEMV (`Int4WeightOnlyLinear.set_kernel("gemlite")`), where the optional
  gemlite package is installed;
- int4 weight-only through vlmslim's CUDA GEMV (`vlmslim.gemv_cuda`, NVRTC, one row of x).
Every tuned kernel's launch configs and their times per shape are in the JSON's `tuned` (`vlmslim.gemv.TUNED`).
Every candidate's output is checked against the float reference of the same dequantised weights. Each
timed call reads a different copy of the weights (enough copies to exceed 4x the L2 cache), so small
matrices are timed from HBM as in a real decode step, not from L2. The fused shapes (q|k|v, gate|up)
show what one launch instead of three / two would give.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F

logger = logging.getLogger("studies.lowbit_kernels")

SHAPES = {"qkvo": (4096, 4096), "gate_up": (11008, 4096), "down": (4096, 11008), "lm_head": (32064, 4096),
          "qkv_fused": (12288, 4096), "gate_up_fused": (22016, 4096)}
L2_BYTES = 60 * 2**20  # H200 (50 MB on an H100): rotate weight copies past 4x this
GROUP = 128


def copies_for(weight_bytes: int) -> int:
    return max(1, -(-4 * L2_BYTES // weight_bytes))


def timed(fns) -> float:
    """Device time (s) per call, cycling through `fns` (one per weight copy) inside one CUDA graph: eager
    back-to-back calls would time the Python launch path (tens of us) rather than the kernels."""
    from vlmslim.gemv import graph_time_ms

    for f in fns[:2]:
        f()  # first calls: compile / tune outside the capture
    calls = [fns[i % len(fns)] for i in range(max(len(fns), 40))]
    return graph_time_ms(calls) / 1000


def quantize_int4(w: torch.Tensor, group: int = GROUP):
    """(N, K) float -> (q (N, K) uint8 in 0..15, scales (N, K/group), zeros (N, K/group)) asymmetric."""
    n, k = w.shape
    g = w.float().view(n, k // group, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    q = ((g - lo) / scale).round().clamp(0, 15).to(torch.uint8)
    return q.view(n, k), scale.squeeze(-1), lo.squeeze(-1)


def study(shapes: list[str], rows: tuple[int, ...]) -> dict:
    from vlmslim import gemv as vgemv, gemv_cuda
    from vlmslim.int4 import Int4WeightOnlyLinear, k_split_fits, pack

    dev = torch.device("cuda")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "triton": getattr(vgemv.triton, "__version__", None), "rows": [], "tuned": {}}
    for name in shapes:
        n, k = SHAPES[name]
        w = torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02
        q, scale, zero = quantize_int4(w)
        w_deq = (q.float().view(n, k // GROUP, GROUP) * scale[..., None] + zero[..., None]).view(n, k)
        c16, c4, c8 = copies_for(2 * n * k), copies_for(n * k // 2), copies_for(n * k)
        wb = [w.bfloat16()] + [w.bfloat16().clone() for _ in range(c16 - 1)]
        w16 = [w] + [w.clone() for _ in range(c16 - 1)]
        # int4 tinygemm (bf16, asymmetric, group 128)
        packed_u8 = (q[:, ::2] << 4 | q[:, 1::2]).contiguous()  # tinygemm wants (N, K/2) uint8, even k high
        w4 = torch._convert_weight_to_int4pack(packed_u8, 8)
        w4s = [w4] + [w4.clone() for _ in range(c4 - 1)]
        sz = torch.stack([scale, zero + 8 * scale], dim=-1).transpose(0, 1).contiguous().bfloat16()
        # vlmslim.gemv int4: our storage (even k low nibble), bf16 scales / zeros
        ours = pack(q)
        ours_s = [(ours.clone(), scale.bfloat16(), zero.bfloat16()) for _ in range(c4)]
        deq_ours = (q.float().view(n, k // GROUP, GROUP) * scale.bfloat16().float()[..., None]
                    + zero.bfloat16().float()[..., None]).view(n, k)
        # tinygemm with K split 2 / 4 ways (vlmslim.int4's layout: column blocks stacked as rows)
        split_layers = {}
        for split in (2, 4):
            if k_split_fits(k, GROUP, split):
                split_layers[split] = []
                for _ in range(c4):
                    lin = Int4WeightOnlyLinear(k, n, False, GROUP, device=dev)
                    lin.weight.copy_(ours)
                    lin.scales.copy_(scale)
                    lin.zeros.copy_(zero)
                    split_layers[split].append(lin.set_k_split(split))
        gemlite_layers = []  # the same codes through gemlite (vlmslim.int4 builds its layer); [] without gemlite
        try:
            for _ in range(c4):
                lin = Int4WeightOnlyLinear(k, n, False, GROUP, device=dev)
                lin.weight.copy_(ours)
                lin.scales.copy_(scale)
                lin.zeros.copy_(zero)
                gemlite_layers.append(lin.set_kernel("gemlite")._gemlite)
        except RuntimeError as e:
            logger.warning("no gemlite column: %s", e)
            gemlite_layers = []
        cuda_s = [(t[0], gemv_cuda.interleave(t[1], t[2])) for t in ours_s]  # vlmslim.gemv_cuda's pairs
        # fp8 e4m3 row-wise
        sw = w.float().abs().amax(1, keepdim=True) / 448
        w8f = (w.float() / sw).to(torch.float8_e4m3fn)
        w8fs = [w8f] + [w8f.clone() for _ in range(c8 - 1)]
        sw_flat = sw.squeeze(1).contiguous()
        for m in rows:
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            xb = x.bfloat16()
            ref = x.float() @ w_deq.t()
            row = {"shape": name, "n": n, "k": k, "m": m}

            def record(key, fns, weight_bytes, check=None):
                try:
                    out = fns[0]()
                    err = None
                    if check is not None:
                        err = float(((out.float() - check).norm() / check.norm()).item())
                    t = timed(fns)
                    row[key] = {"us": round(1e6 * t, 2), "gb_s": round(weight_bytes / t / 1e9, 1), "rel_err": err}
                except (RuntimeError, TypeError, AttributeError, NotImplementedError) as e:
                    row[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}

            record("fp16", [lambda w=w: F.linear(x, w) for w in w16], 2 * n * k, x.float() @ w.float().t())
            record("bf16", [lambda w=w: F.linear(xb, w) for w in wb], 2 * n * k)
            record("int4wo_tinygemm", [lambda w=w: torch._weight_int4pack_mm(xb, w, GROUP, sz) for w in w4s],
                   n * k // 2, ref)
            record("int4wo_gemv", [lambda t=t: torch.ops.vlmslim.int4_gemv(xb, *t, GROUP) for t in ours_s],
                   n * k // 2, xb.float() @ deq_ours.t())
            for split, layers in split_layers.items():
                # the kernel alone (the compiled engine fuses the blocks' sum into the next kernel); the check
                # runs the module's whole forward
                xs = xb.reshape(m * split, k // split)
                record(f"int4wo_tinygemm_ks{split}",
                       [lambda lin=lin: torch._weight_int4pack_mm(xs, lin._packed, GROUP, lin._scales_zeros)
                        for lin in layers], n * k // 2)
                if "us" in row[f"int4wo_tinygemm_ks{split}"]:
                    out, check = layers[0](xb).float(), xb.float() @ deq_ours.t()
                    row[f"int4wo_tinygemm_ks{split}"]["rel_err"] = float(((out - check).norm() / check.norm()).item())
            if m == 1:
                record("int4wo_cuda", [lambda t=t: torch.ops.vlmslim.int4_gemv_cuda(xb, *t, GROUP) for t in cuda_s],
                       n * k // 2, xb.float() @ deq_ours.t())
            if gemlite_layers:
                record("int4wo_gemlite", [lambda g=g: g(xb) for g in gemlite_layers], n * k // 2,
                       xb.float() @ deq_ours.t())
            record("fp8wo_gemv", [lambda w=w: torch.ops.vlmslim.w8_gemv(xb, w, sw_flat) for w in w8fs], n * k,
                   xb.float() @ (w8f.float() * sw).t())
            if m <= 16:
                xp = torch.zeros(16, k, device=dev, dtype=torch.float16)
                xp[:m] = x
                sx = xp.float().abs().amax(1, keepdim=True).clamp(min=1e-8) / 448
                x8 = (xp.float() / sx).to(torch.float8_e4m3fn)
                record("fp8_scaled_mm", [lambda w=w: torch._scaled_mm(x8, w.t(), scale_a=sx, scale_b=sw.t(),
                                                                      out_dtype=torch.bfloat16)[:m] for w in w8fs],
                       n * k, x.float() @ (w8f.float() * sw).t())
            results["rows"].append(row)
            logger.info("%s", row)
    results["tuned"] = dict(vgemv.TUNED)  # every tuned kernel and shape: chosen config, its us, every config's us
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("."))
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"Comma list of {', '.join(SHAPES)}.")
    ap.add_argument("--rows", default="1,8", help="Rows of x (batch at decode), comma list.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = study(args.shapes.split(","), tuple(int(r) for r in args.rows.split(",")))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "lowbit_kernels.json").write_text(json.dumps(results, indent=2))
    click.echo(f"wrote {args.out_dir}/lowbit_kernels.json")


if __name__ == "__main__":
    main()
