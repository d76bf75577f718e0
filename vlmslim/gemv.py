"""Weight-only low-bit GEMV in Triton: the decode step's `y = x @ W^T` for a few rows of x.

Why our own kernel: at batch 1 every decode-step Linear is a GEMV whose time is reading W. On one H200
(docs/lowbit_kernels.md) ATen's int4 tinygemm reaches 763-1728 GB/s and cuBLAS' fp8 GEMM is no faster
than fp16, so neither turns 4x / 2x fewer bytes into 4x / 2x less time. These kernels read the packed
weights once, unpack in registers and reduce in fp32; a few launch configurations per shape are timed
on first use (`_tune`, CUDA-graph timing) and the fastest is kept for that (kind, rows, N, K, group) key.

Formats (row-major, N outputs x K inputs):
    int4: weight (N, K/2) uint8 read as (N, K/8) int32 (nibble i of word j is input 8j+i, as
          `vlmslim.int4.pack` writes it), scales / zeros (N, K/G) bf16: w = code * scale + zero.
    w8:   weight (N, K) float8_e4m3fn or int8, scale (N,) fp32: w = code * scale (`fp8`, `int8wo`).
Both return (M, N) fp32. CUDA only (`available`); the CPU paths of the modules do not come here.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)

try:  # the GPU image ships Triton with torch; the CPU wheel does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

# every tuning in this process, by what was tuned (kernel and shape): {"config": the chosen config's fields, "us": its
# device time, "all_us": every config that ran -> its time}. Bench records it with each row, so a slow run shows
# which launch configs it decoded with; studies read the per-config times.
TUNED: dict[str, dict] = {}
MAX_ROWS = 8  # rows of x (batch x new tokens) these kernels take; more rows are a GEMM's job


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


@dataclass(frozen=True)
class LaunchConfig:
    block_n: int  # output rows per program
    block_k: int  # inputs per loop step (int4 with several rows: at most one group, one scale per row and step)
    split_k: int  # programs sharing one row block (fp32 atomics combine them)
    num_warps: int
    num_stages: int = 3


# Candidates for a memory-bound GEMV on Hopper. Each program streams `block_n` rows through a K loop
# (software-pipelined `num_stages` deep); the weight tile stays 2-D (rows x inputs) in registers, x rows
# are re-read per tile from L1/L2 (x is KBs, W is MBs).
CONFIGS = {
    # single row (batch-1 decode): long contiguous reads per row, few rows per program
    ("int4", 1): tuple(LaunchConfig(*c) for c in (
        (8, 1024, 1, 4), (16, 512, 1, 4), (16, 1024, 1, 4), (32, 512, 1, 4), (8, 512, 1, 4), (16, 1024, 1, 8),
        (8, 2048, 1, 4), (8, 1024, 1, 4, 4), (64, 128, 4, 4), (4, 1024, 1, 2), (4, 2048, 1, 4), (8, 512, 1, 2),
        (16, 256, 1, 2), (32, 256, 1, 4),
    )),
    ("w8", 1): tuple(LaunchConfig(*c) for c in (
        (8, 512, 1, 4), (16, 256, 1, 4), (32, 256, 1, 4, 4), (8, 512, 1, 4, 4), (8, 1024, 1, 4), (4, 1024, 1, 2),
        (16, 512, 1, 4, 4), (8, 256, 1, 2, 4),
    )),
    # 2-8 rows: the weight tile is reused for every row (int4: one group per tile)
    ("int4", 8): tuple(LaunchConfig(*c) for c in (
        (32, 128, 1, 4), (64, 128, 1, 4), (128, 128, 1, 4), (128, 128, 1, 8), (64, 128, 2, 4), (32, 128, 2, 4),
        (64, 128, 4, 4), (64, 64, 1, 4), (128, 64, 1, 4), (64, 256, 1, 4),
    )),
    ("w8", 8): tuple(LaunchConfig(*c) for c in (
        (16, 256, 1, 4), (32, 256, 1, 4), (32, 128, 1, 4), (64, 128, 1, 4), (16, 512, 1, 4), (32, 256, 2, 4),
        (16, 256, 2, 4), (64, 128, 2, 4),
    )),
}
_BEST: dict[tuple, LaunchConfig] = {}


if triton is not None:

    @triton.jit
    def _store(y_ptr, acc, rm, rn, M, N, SPLIT_K: tl.constexpr):
        """acc (BM, BN) into y (M, N) fp32; split-K programs add their partial sums atomically."""
        y_off = rm[:, None] * N + rn[None, :]
        y_ok = (rm < M)[:, None] & (rn < N)[None, :]
        if SPLIT_K == 1:
            tl.store(y_ptr + y_off, acc, mask=y_ok)
        else:
            tl.atomic_add(y_ptr + y_off, acc, mask=y_ok)

    @triton.jit
    def _nibble(w, i: tl.constexpr):
        """Code i (0..15) of each int32 word as fp32 without an int-to-float conversion (a quarter-rate
        instruction that bounds a GEMV on Hopper): 0x4B000000 | q is the float 2^23 + q, exactly."""
        return (((w >> (4 * i)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0

    @triton.jit
    def _unit_nibble(w, i: tl.constexpr):
        """Code i of each word as the fp32 1 + q / 16: q moved into the top 4 mantissa bits of 1.0."""
        if 4 * i >= 19:
            m = (w >> (4 * i - 19)) & 0x780000
        else:
            m = (w << (19 - 4 * i)) & 0x780000
        return (m | 0x3F800000).to(tl.float32, bitcast=True)

    @triton.jit
    def _int4_kernel(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, M, N, K,
                     GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     SPLIT_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        rj = tl.arange(0, BLOCK_K // 8)
        n_ok = rn < N
        groups = K // GROUP
        words = K // 8
        if BLOCK_M == 1:
            # One row of x: products accumulate element-wise in a (BN, BK/8) tile and are reduced across
            # threads once, after the K loop (a per-step reduction costs more than the loads). A tile may
            # span several groups: each packed word (8 inputs, never across a group) gathers its own
            # scale and zero (L1 hits: neighbouring words share them).
            acc1 = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
            for t in range(0, tl.cdiv(K, SPLIT_K * BLOCK_K)):
                k0 = (t * SPLIT_K + pid_k) * BLOCK_K
                kw = k0 // 8 + rj
                ok = n_ok[:, None] & (kw < words)[None, :]
                w = tl.load(w_ptr + rn[:, None] * words + kw[None, :], mask=ok, other=0)
                sz = rn[:, None] * groups + (kw * 8 // GROUP)[None, :]
                s = tl.load(s_ptr + sz, mask=ok, other=0.0).to(tl.float32)  # (BN, BK/8)
                z = tl.load(z_ptr + sz, mask=ok, other=0.0).to(tl.float32)
                # per word, with f_i = 1 + q_i / 16 (`_unit_nibble`: a shift, a mask-or, then one FMA per code):
                # sum_i (q_i s + z) x_i = 16 s (sum_i f_i x_i) + (z - 16 s) (sum_i x_i)
                d = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
                xsum = tl.zeros((BLOCK_K // 8,), dtype=tl.float32)
                for i in tl.static_range(8):
                    kx = k0 + 8 * rj + i
                    xi = tl.load(x_ptr + kx, mask=kx < K, other=0.0).to(tl.float32)
                    d += _unit_nibble(w, i) * xi[None, :]
                    xsum += xi
                acc1 += (16.0 * s) * d + (z - 16.0 * s) * xsum[None, :]
            acc = tl.sum(acc1, axis=1)[None, :]  # (1, BN)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for t in range(0, tl.cdiv(K, SPLIT_K * BLOCK_K)):  # this program's K tiles: pid_k, pid_k + SPLIT_K, ...
                k0 = (t * SPLIT_K + pid_k) * BLOCK_K
                kw = k0 // 8 + rj
                w = tl.load(w_ptr + rn[:, None] * words + kw[None, :], mask=n_ok[:, None] & (kw < words)[None, :],
                            other=0)  # (BN, BK/8) int32: nibble i of word j is input k0 + 8j + i
                g = k0 // GROUP  # BLOCK_K divides GROUP: one scale and zero per row for the whole tile
                s = tl.load(s_ptr + rn * groups + g, mask=n_ok & (g < groups), other=0.0).to(tl.float32)
                z = tl.load(z_ptr + rn * groups + g, mask=n_ok & (g < groups), other=0.0).to(tl.float32)
                dot = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                xs = tl.zeros((BLOCK_M,), dtype=tl.float32)
                for i in tl.static_range(8):
                    q = _nibble(w, i)  # (BN, BK/8)
                    kx = k0 + 8 * rj + i
                    for m in tl.static_range(BLOCK_M):
                        xm = tl.load(x_ptr + m * K + kx, mask=(kx < K) & (m < M), other=0.0).to(tl.float32)
                        part = tl.sum(q * xm[None, :], axis=1)  # (BN,)
                        dot += tl.where((rm == m)[:, None], part[None, :], 0.0)
                        xs += tl.where(rm == m, tl.sum(xm, axis=0), 0.0)
                acc += dot * s[None, :] + xs[:, None] * z[None, :]  # sum_k (q s + z) x = s (q . x) + z sum x
        _store(y_ptr, acc, rm, rn, M, N, SPLIT_K)

    @triton.jit
    def _w8_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        n_ok = rn < N
        if BLOCK_M == 1:  # as in _int4_kernel: reduce once, after the K loop
            acc1 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            for t in range(0, tl.cdiv(K, SPLIT_K * BLOCK_K)):
                k0 = (t * SPLIT_K + pid_k) * BLOCK_K
                rk = k0 + tl.arange(0, BLOCK_K)
                k_ok = rk < K
                w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
                xk = tl.load(x_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)
                acc1 += w.to(tl.float32) * xk[None, :]
            acc = tl.sum(acc1, axis=1)[None, :]
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for t in range(0, tl.cdiv(K, SPLIT_K * BLOCK_K)):
                k0 = (t * SPLIT_K + pid_k) * BLOCK_K
                rk = k0 + tl.arange(0, BLOCK_K)
                k_ok = rk < K
                w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=n_ok[:, None] & k_ok[None, :],
                            other=0.0).to(tl.float32)  # (BN, BK)
                for m in tl.static_range(BLOCK_M):
                    xm = tl.load(x_ptr + m * K + rk, mask=k_ok & (m < M), other=0.0).to(tl.float32)  # (BK,)
                    part = tl.sum(w * xm[None, :], axis=1)
                    acc += tl.where((rm == m)[:, None], part[None, :], 0.0)
        acc = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0)[None, :]
        _store(y_ptr, acc, rm, rn, M, N, SPLIT_K)


def _block_m(m: int) -> int:
    return 1 if m <= 1 else 1 << (m - 1).bit_length()


def _fits(cfg: LaunchConfig, block_m: int, group: int | None) -> bool:
    if group is not None and block_m > 1 and (group % cfg.block_k or cfg.block_k > group):
        return False  # the multi-row int4 path takes one scale per row and tile
    return True


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
        _w8_kernel[grid](x, w, s, y, m, n, k, **common)
    return y


def graph_time_ms(calls: list, replays: int = 5) -> float:
    """Device time (ms) per call: `calls` captured once into a CUDA graph, median of `replays` replays.

    Launching from Python costs tens of microseconds per call, more than a decode GEMV takes on the GPU,
    so timing eager calls back to back would time the host; a decode step replays CUDA graphs too."""
    import statistics

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream (compiles, allocates)
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    return statistics.median(times)


def copies_past_l2(tensors: tuple, device: torch.device) -> list[tuple]:
    """`tensors` and enough clones of them that each timed call reads from HBM, as in a decode step (where every
    layer's weights / cache are new), not from L2."""
    size = sum(t.numel() * t.element_size() for t in tensors)
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    n = min(32, max(2, -(-4 * l2 // size)))
    return [tensors] + [tuple(t.clone() for t in tensors) for _ in range(n - 1)]


def fastest(configs, calls: Callable[[Any], list[Callable]], what: str) -> tuple[Any, dict[Any, float]]:
    """The config whose `calls(config)` take the least device time (`graph_time_ms`), and every config's ms.
    A config that does not compile or launch (registers, shared memory) is skipped; none running raises."""
    timed = {}
    for cfg in configs:
        try:
            timed[cfg] = graph_time_ms(calls(cfg))
        except Exception as e:  # noqa: BLE001 - whatever the compiler or the launch rejects
            logger.debug("%s: config %s failed: %s", what, cfg, e)
    if not timed:
        raise RuntimeError(f"no launch config compiled and ran for {what}")
    best = min(timed, key=timed.get)
    logger.info("%s: %s (%.1f us)", what, best, timed[best] * 1e3)
    TUNED[what] = {"config": asdict(best) if is_dataclass(best) else best, "us": round(timed[best] * 1e3, 2),
                   "all_us": {str(cfg): round(ms * 1e3, 2) for cfg, ms in timed.items()}}
    return best, timed


def tuned(best: dict, key: tuple, tune: Callable[[], Any], what: str) -> Any:
    """`best[key]`, tuned by `tune()` on first use. Tuning synchronises, so a first use inside CUDA-graph capture
    raises (the compiled engine runs one eager step before it captures)."""
    cfg = best.get(key)
    if cfg is None:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{what} reached for the first time inside CUDA-graph capture; "
                               "run the model once eagerly first (CompiledDecoder does)")
        cfg = best[key] = tune()
    return cfg


def _tune(kind: str, x: torch.Tensor, tensors: tuple, n: int, k: int, group: int | None) -> LaunchConfig:
    """The fastest fitting config for this shape (CUDA-graph replays over rotating weight copies)."""
    block_m = _block_m(x.shape[0])
    sets = copies_past_l2(tensors, x.device)
    configs = [c for c in CONFIGS[kind, 1 if block_m == 1 else MAX_ROWS] if _fits(c, block_m, group)]
    best, _ = fastest(configs, lambda cfg: [lambda t=t: _launch(kind, cfg, x, t, n, k, group) for t in sets],
                      f"gemv {kind} M={x.shape[0]} N={n} K={k}")
    return best


def _gemv(kind: str, x: torch.Tensor, tensors: tuple, n: int, k: int, group: int | None) -> torch.Tensor:
    key = (kind, _block_m(x.shape[0]), n, k, group, x.device.index)
    cfg = tuned(_BEST, key, lambda: _tune(kind, x, tensors, n, k, group), f"gemv {kind} {n}x{k}")
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


@torch.library.custom_op("vlmslim::w8_gemv", mutates_args=())
def w8_gemv(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (M, K), weight (N, K) float8_e4m3fn or int8, scale (N,) fp32 -> (M, N) fp32."""
    return _gemv("w8", x.contiguous(), (weight, scale), weight.shape[0], weight.shape[1], None)


@w8_gemv.register_fake
def _(x, weight, scale):
    return x.new_empty(x.shape[0], weight.shape[0], dtype=torch.float32)
