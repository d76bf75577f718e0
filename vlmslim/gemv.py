"""Weight-only low-bit GEMV in Triton: the decode step's `y = x @ W^T` for a few rows of x.

Why our own kernel: at batch 1 every decode-step Linear is a GEMV whose time is reading W. On one H200
(docs/lowbit_kernels.md) ATen's int4 tinygemm reaches 763-1728 GB/s and cuBLAS' fp8 GEMM is no faster
than fp16, so neither turns 4x / 2x fewer bytes into 4x / 2x less time. These kernels read the packed
weights once, unpack in registers and reduce in fp32; a few launch configurations per shape are timed
on first use (`_tune`) and the fastest is kept for that (kind, rows, N, K, group) key.

Formats (row-major, N outputs x K inputs):
    int4: weight (N, K/2) uint8 read as (N, K/8) int32 (nibble i of word j is input 8j+i, as
          `vlmslim.int4.pack` writes it), scales / zeros (N, K/G) bf16: w = code * scale + zero.
    fp8:  weight (N, K) float8_e4m3fn, scale (N,) fp32: w = code * scale.
Both return (M, N) fp32. CUDA only (`available`); the CPU paths of the modules do not come here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

try:  # the GPU image ships Triton with torch; the CPU wheel does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

MAX_ROWS = 8  # rows of x (batch x new tokens) these kernels take; more rows are a GEMM's job


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


@dataclass(frozen=True)
class LaunchConfig:
    block_n: int  # output rows per program
    block_k: int  # inputs per loop step
    split_k: int  # programs sharing one row block (fp32 atomics combine them)
    num_warps: int
    num_stages: int = 3


# Candidates for a memory-bound GEMV on Hopper: enough programs to fill 132 SMs a few times over for
# N = 4096 (block_n x split_k), long contiguous reads per row (block_k / 2 bytes for int4).
CONFIGS = tuple(LaunchConfig(*c) for c in (
    (8, 512, 1, 4), (16, 256, 1, 4), (16, 512, 1, 4), (16, 256, 2, 4), (16, 512, 2, 8), (32, 256, 1, 4),
    (32, 256, 2, 4), (32, 256, 4, 4), (32, 512, 2, 8), (64, 256, 2, 8), (64, 128, 4, 4), (16, 128, 8, 4),
    (8, 1024, 1, 4), (32, 128, 8, 4),
    (8, 128, 8, 4), (8, 256, 4, 4), (16, 128, 4, 4),  # small tiles for 2-8 rows (the product is rows x tile)
))
_BEST: dict[tuple, LaunchConfig] = {}


if triton is not None:

    @triton.jit
    def _int4_kernel(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, M, N, K,
                     GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     SPLIT_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        n_ok = rn < N
        m_ok = rm < M
        G_PER: tl.constexpr = BLOCK_K // GROUP
        groups = K // GROUP
        words = K // 8
        shifts = tl.arange(0, 8) * 4
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for t in range(0, tl.cdiv(K, SPLIT_K * BLOCK_K)):  # this program's K tiles: pid_k, pid_k + SPLIT_K, ...
            k0 = (t * SPLIT_K + pid_k) * BLOCK_K
            rw = k0 // 8 + tl.arange(0, BLOCK_K // 8)
            w = tl.load(w_ptr + rn[:, None] * words + rw[None, :], mask=n_ok[:, None] & (rw < words)[None, :],
                        other=0)  # (BN, BK/8) int32
            q = (w[:, :, None] >> shifts[None, None, :]) & 0xF  # (BN, BK/8, 8): input 8j+i
            q = tl.reshape(q, (BLOCK_N, G_PER, GROUP)).to(tl.float32)
            rk = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=m_ok[:, None] & (rk < K)[None, :],
                        other=0.0).to(tl.float32)
            x = tl.reshape(x, (BLOCK_M, G_PER, GROUP))
            rg = k0 // GROUP + tl.arange(0, G_PER)
            sz_off = rn[:, None] * groups + rg[None, :]
            sz_ok = n_ok[:, None] & (rg < groups)[None, :]
            s = tl.load(s_ptr + sz_off, mask=sz_ok, other=0.0).to(tl.float32)  # (BN, G_PER)
            z = tl.load(z_ptr + sz_off, mask=sz_ok, other=0.0).to(tl.float32)
            qx = tl.sum(q[None, :, :, :] * x[:, None, :, :], axis=3)  # (BM, BN, G_PER)
            xs = tl.sum(x, axis=2)  # (BM, G_PER): the zero's share of each group
            acc += tl.sum(qx * s[None, :, :] + xs[:, None, :] * z[None, :, :], axis=2)
        y_off = rm[:, None] * N + rn[None, :]
        y_ok = m_ok[:, None] & n_ok[None, :]
        if SPLIT_K == 1:
            tl.store(y_ptr + y_off, acc, mask=y_ok)
        else:
            tl.atomic_add(y_ptr + y_off, acc, mask=y_ok)

    @triton.jit
    def _fp8_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        n_ok = rn < N
        m_ok = rm < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for t in range(0, tl.cdiv(K, SPLIT_K * BLOCK_K)):  # this program's K tiles: pid_k, pid_k + SPLIT_K, ...
            k0 = (t * SPLIT_K + pid_k) * BLOCK_K
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < K
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :],
                        other=0.0).to(tl.float32)  # (BN, BK)
            x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=m_ok[:, None] & k_ok[None, :],
                        other=0.0).to(tl.float32)  # (BM, BK)
            acc += tl.sum(w[None, :, :] * x[:, None, :], axis=2)
        acc = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0)[None, :]
        y_off = rm[:, None] * N + rn[None, :]
        y_ok = m_ok[:, None] & n_ok[None, :]
        if SPLIT_K == 1:
            tl.store(y_ptr + y_off, acc, mask=y_ok)
        else:
            tl.atomic_add(y_ptr + y_off, acc, mask=y_ok)


def _block_m(m: int) -> int:
    return 1 if m <= 1 else 1 << (m - 1).bit_length()


def _fits(cfg: LaunchConfig, block_m: int, group: int | None) -> bool:
    if group is not None and (cfg.block_k % group or cfg.block_k < group):
        return False
    return block_m * cfg.block_n * cfg.block_k <= 16384  # the (BM, BN, BK) product lives in registers


def _launch(kind: str, cfg: LaunchConfig, x: torch.Tensor, tensors: tuple, n: int, k: int,
            group: int | None) -> torch.Tensor:
    m = x.shape[0]
    y = (torch.zeros if cfg.split_k > 1 else torch.empty)(m, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, cfg.block_n), cfg.split_k)
    common = dict(BLOCK_M=_block_m(m), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if kind == "int4":
        w, s, z = tensors
        _int4_kernel[grid](x, w, s, z, y, m, n, k, GROUP=group, **common)
    else:
        w, s = tensors
        _fp8_kernel[grid](x, w, s, y, m, n, k, **common)
    return y


def _tune(kind: str, x: torch.Tensor, tensors: tuple, n: int, k: int, group: int | None) -> LaunchConfig:
    """The fastest fitting config for this shape (median of CUDA-event timings, L2 flushed between runs)."""
    block_m = _block_m(x.shape[0])
    timed = []
    for cfg in CONFIGS:
        if not _fits(cfg, block_m, group):
            continue
        try:
            ms = triton.testing.do_bench(lambda: _launch(kind, cfg, x, tensors, n, k, group),
                                         warmup=5, rep=20, return_mode="median")
        except Exception as e:  # noqa: BLE001 - a config the compiler rejects (registers, shared memory)
            logger.debug("gemv %s config %s failed: %s", kind, cfg, e)
            continue
        timed.append((ms, cfg))
    if not timed:
        raise RuntimeError(f"no {kind} GEMV launch config compiled for {x.shape[0]}x{k} @ {n}x{k}")
    ms, best = min(timed, key=lambda t: t[0])
    logger.info("gemv %s M=%d N=%d K=%d: %s (%.1f us)", kind, x.shape[0], n, k, best, ms * 1e3)
    return best


def _gemv(kind: str, x: torch.Tensor, tensors: tuple, n: int, k: int, group: int | None) -> torch.Tensor:
    key = (kind, _block_m(x.shape[0]), n, k, group, x.device.index)
    cfg = _BEST.get(key)
    if cfg is None:
        if torch.cuda.is_current_stream_capturing():  # tuning synchronises: impossible inside a CUDA graph
            raise RuntimeError(f"gemv {kind} {n}x{k} reached for the first time inside CUDA-graph capture; "
                               "run the model once eagerly first")
        cfg = _BEST[key] = _tune(kind, x, tensors, n, k, group)
    return _launch(kind, cfg, x, tensors, n, k, group)


# Opaque to torch.compile: dynamo records one call, inductor calls it as is, CUDA graphs capture its
# launches (after the first, eager, call has tuned it).
@torch.library.custom_op("vlmslim::int4_gemv", mutates_args=())
def int4_gemv(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              group: int) -> torch.Tensor:
    """x (M, K) bf16/fp16, weight (N, K/2) uint8, scales / zeros (N, K/G) -> (M, N) fp32."""
    n, k = weight.shape[0], weight.shape[1] * 2
    return _gemv("int4", x.contiguous(), (weight.view(torch.int32), scales, zeros), n, k, group)


@int4_gemv.register_fake
def _(x, weight, scales, zeros, group):
    return x.new_empty(x.shape[0], weight.shape[0], dtype=torch.float32)


@torch.library.custom_op("vlmslim::fp8_gemv", mutates_args=())
def fp8_gemv(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (M, K), weight (N, K) float8_e4m3fn, scale (N,) fp32 -> (M, N) fp32."""
    return _gemv("fp8", x.contiguous(), (weight, scale), weight.shape[0], weight.shape[1], None)


@fp8_gemv.register_fake
def _(x, weight, scale):
    return x.new_empty(x.shape[0], weight.shape[0], dtype=torch.float32)
