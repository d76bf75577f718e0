"""Which low-bit GEMV kernels are fast on this GPU? Candidates for a fast weight-only quantization backend.

    python -m studies.lowbit_kernels --out-dir $OUT

Decode at batch 1-8 is a matrix-vector product per Linear: its time is the weight bytes read. Per
LLaVA-1.5-7B language-model shape (q/k/v/o 4096x4096, gate/up 11008x4096, down 4096x11008, lm_head
32064x4096) and M in (1, 8) rows, each candidate's kernel time (CUDA events over 200 back-to-back calls
after warm-up) and the weight bandwidth it reaches:
- fp16 / bf16 `F.linear` (cuBLAS): the reference;
- int8 weight-only `torch._weight_int8pack_mm` (ATen), where this torch has a CUDA kernel;
- int4 weight-only `torch._weight_int4pack_mm` (ATen tinygemm; bf16, group size 128);
- fp8 e4m3 `torch._scaled_mm` with row-wise scales (Hopper), M padded to 16;
- int4 weight-only, our own minimal Triton GEMV (unpack two nibbles per byte, group scales, fp32 accumulate).
Every candidate's output is checked against the float reference of the same dequantised weights.
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

SHAPES = {"qkvo": (4096, 4096), "gate_up": (11008, 4096), "down": (4096, 11008), "lm_head": (32064, 4096)}
GROUP = 128


def timed(fn, iters: int = 200) -> float:
    """Median-free mean kernel time (s) of `fn()` over back-to-back calls, CUDA events."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / iters


def quantize_int4(w: torch.Tensor, group: int = GROUP):
    """(N, K) float -> (q (N, K) uint8 in 0..15, scales (N, K/group), zeros (N, K/group)) asymmetric."""
    n, k = w.shape
    g = w.float().view(n, k // group, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    q = ((g - lo) / scale).round().clamp(0, 15).to(torch.uint8)
    return q.view(n, k), scale.squeeze(-1), lo.squeeze(-1)


def triton_int4_gemv():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, N, K, M: tl.constexpr, GROUP: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # y (M, N) = x (M, K) @ dequant(w)^T; w packed (N, K/2) uint8: low nibble = even k, high = odd k.
        pid = tl.program_id(0)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_N, M), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            packed = tl.load(w_ptr + rn[:, None] * (K // 2) + rk[None, :])  # (BLOCK_N, BLOCK_K/2)
            lo = (packed & 0xF).to(tl.float32)
            hi = (packed >> 4).to(tl.float32)
            gi = k0 // GROUP
            s = tl.load(s_ptr + rn * (K // GROUP) + gi)[:, None]
            z = tl.load(z_ptr + rn * (K // GROUP) + gi)[:, None]
            w_lo = lo * s + z  # (BLOCK_N, BLOCK_K/2) weights of even k
            w_hi = hi * s + z
            for m in tl.static_range(M):
                xe = tl.load(x_ptr + m * K + k0 + 2 * tl.arange(0, BLOCK_K // 2)).to(tl.float32)
                xo = tl.load(x_ptr + m * K + k0 + 2 * tl.arange(0, BLOCK_K // 2) + 1).to(tl.float32)
                part = tl.sum(w_lo * xe[None, :] + w_hi * xo[None, :], axis=1)  # (BLOCK_N,)
                sel = (tl.arange(0, M) == m).to(tl.float32)
                acc += part[:, None] * sel[None, :]
        for m in tl.static_range(M):
            sel = (tl.arange(0, M) == m).to(tl.float32)
            tl.store(y_ptr + m * N + rn, tl.sum(acc * sel[None, :], axis=1).to(tl.float16))

    def run(x, packed, scales, zeros, n, k, block_n=32, block_k=GROUP):
        m = x.shape[0]
        y = torch.empty(m, n, dtype=torch.float16, device=x.device)
        kernel[(n // block_n,)](x, packed, scales, zeros, y, n, k, M=m, GROUP=GROUP, BLOCK_N=block_n,
                                BLOCK_K=block_k, num_warps=4)
        return y

    return run


def study() -> dict:
    dev = torch.device("cuda")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "rows": []}
    gemv = None
    try:
        gemv = triton_int4_gemv()
    except ImportError as e:
        logger.warning("no triton: %s", e)
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02
        q, scale, zero = quantize_int4(w)
        w_deq = (q.float().view(n, k // GROUP, GROUP) * scale[..., None] + zero[..., None]).view(n, k)
        for m in (1, 8):
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            ref = x.float() @ w_deq.t()
            row = {"shape": name, "n": n, "k": k, "m": m}

            def record(key, fn, weight_bytes, check=None):
                try:
                    out = fn()
                    err = None
                    if check is not None:
                        err = float(((out.float() - check).norm() / check.norm()).item())
                    t = timed(fn)
                    row[key] = {"us": round(1e6 * t, 2), "gb_s": round(weight_bytes / t / 1e9, 1), "rel_err": err}
                except (RuntimeError, TypeError, AttributeError, NotImplementedError) as e:
                    row[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}

            record("fp16", lambda: F.linear(x, w), 2 * n * k, x.float() @ w.float().t())
            wb, xb = w.bfloat16(), x.bfloat16()
            record("bf16", lambda: F.linear(xb, wb), 2 * n * k)
            # int8 weight-only, per-row scales
            s8 = w.float().abs().amax(1) / 127
            w8 = (w.float() / s8[:, None]).round().clamp(-127, 127).to(torch.int8)
            record("int8wo_aten", lambda: torch._weight_int8pack_mm(x, w8, s8.half()), n * k,
                   x.float() @ (w8.float() * s8[:, None]).t())
            # int4 tinygemm (bf16, asymmetric, group 128)
            try:
                packed_u8 = (q[:, ::2] << 4 | q[:, 1::2]).contiguous()  # tinygemm wants (N, K/2) uint8, even k high
                w4 = torch._convert_weight_to_int4pack(packed_u8, 8)
                sz = torch.stack([scale, zero + 8 * scale], dim=-1).transpose(0, 1).contiguous().bfloat16()
                record("int4wo_tinygemm", lambda: torch._weight_int4pack_mm(xb, w4, GROUP, sz), n * k // 2, ref)
            except (RuntimeError, TypeError, AttributeError) as e:
                row["int4wo_tinygemm"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            # fp8 e4m3 row-wise
            try:
                sw = w.float().abs().amax(1, keepdim=True) / 448
                w8f = (w.float() / sw).to(torch.float8_e4m3fn)
                xp = torch.zeros(16, k, device=dev, dtype=torch.float16)
                xp[:m] = x
                sx = xp.float().abs().amax(1, keepdim=True).clamp(min=1e-8) / 448
                x8 = (xp.float() / sx).to(torch.float8_e4m3fn)
                record("fp8_scaled_mm", lambda: torch._scaled_mm(x8, w8f.t(), scale_a=sx, scale_b=sw.t(),
                                                                 out_dtype=torch.bfloat16)[:m], n * k,
                       x.float() @ (w8f.float() * sw).t())
            except (RuntimeError, TypeError, AttributeError) as e:
                row["fp8_scaled_mm"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            if gemv is not None:
                packed_lohi = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()  # our layout: even k in the low nibble
                sc, zc = scale.contiguous().float(), zero.contiguous().float()
                for bn in (16, 32, 64):
                    record(f"int4wo_triton_bn{bn}",
                           lambda bn=bn: gemv(x, packed_lohi, sc, zc, n, k, block_n=bn), n * k // 2, ref)
            results["rows"].append(row)
            logger.info("%s", row)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("."))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = study()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "lowbit_kernels.json").write_text(json.dumps(results, indent=2))
    click.echo(f"wrote {args.out_dir}/lowbit_kernels.json")


if __name__ == "__main__":
    main()
