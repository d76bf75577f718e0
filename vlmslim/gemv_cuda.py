"""Batch-1 int4 GEMV in CUDA C, compiled at run time by NVRTC (`torch.cuda._compile_kernel`; no toolchain).

Why: at batch 1 every decode-step Linear is a GEMV whose time is reading W. ATen's tinygemm (int4wo's kernel
before this one) reads LLaVA-7B's int4 weights at 1.2-1.75 TB/s of the H100's 3.0 (docs/performance.md): it is a
tensor-core GEMM that computes 16 activation rows per tile to use one. Our Triton GEMVs were slower still
(they read x with a stride). This kernel is a plain GEMV on CUDA cores, written for the stored int4 layout
itself, so it needs no second copy of the weights:

    weight (N, K/2) uint8, read as (N, K/32) 16-byte chunks: 32 codes, nibble i of word j is input 8j + i
    scales, zeros (N, K/G) bf16, interleaved here once as (N, K/G) 32-bit pairs (scale low, zero high)
    x (K,) bf16 -> y (N,) bf16,  w = q * scale + zero

Each warp owns R output rows; lane l streams chunks l, l + 32, ... of each row (512 contiguous bytes per
warp and row per step; the source loads U steps before using any, to keep bytes in flight, though the compiler
may interleave those loads with the math). A code
becomes a float without a conversion instruction: its nibble is put into the mantissa of 1.0
(PRMT), giving f = 1 + q/16 exactly. With X = the sum of the chunk's 32 inputs (computed once per chunk,
shared by the R rows), sum_k x_k q_k = 16 (sum_k x_k f_k - X), so a chunk costs per weight one PRMT,
a quarter of the shifts and masks, and one FMA, all in fp32; scale and zero are applied once per chunk:
    y_n += 16 s (acc - X) + z X
The warp's lanes are summed with shuffles at the end; y is rounded to bf16 (nearest even).

Launch configurations (R, U, warps per block, codes loaded past L1 or not) are timed per shape on first use
(`vlmslim.gemv.fastest`: CUDA-graph replays over weight copies larger than L2) and the fastest is kept. Measured
on one H100 (docs/lowbit_kernels.md): 1.07-1.28x faster than tinygemm on LLaVA-7B's shapes. CUDA only, one row
of x: `Int4WeightOnlyLinear` sends more rows to tinygemm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmslim import gemv

CHUNK = 32  # inputs per 16-byte load of codes; the group size must be a power-of-two multiple of it

_SOURCE = r"""
#define R __R__
#define U __U__
#define WARPS __WARPS__
#define STREAM __STREAM__

// codes are read once per step: STREAM keeps them out of L1 (x, read by every warp, stays there)
__device__ __forceinline__ uint4 load_codes(const uint4* p) {
#if STREAM
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
#else
    return __ldg(p);
#endif
}

__device__ __forceinline__ float lo_bf16(unsigned int v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float hi_bf16(unsigned int v) { return __uint_as_float(v & 0xffff0000u); }
// byte p of b is 0x80 | q << 3 -> the float 1 + q / 16 (bytes: 0x00, 0x00, b_p, 0x3f)
__device__ __forceinline__ float code(unsigned int b, unsigned int p) {
    return __uint_as_float(__byte_perm(b, 0x3f000000u, 0x7044u | (p << 8)));
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
int4_gemv_m1(const uint4* __restrict__ w, const unsigned int* __restrict__ sz, const uint4* __restrict__ x,
             unsigned short* __restrict__ y, int n, int k, int group, int chunk_shift) {
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * WARPS + (threadIdx.x >> 5)) * R;
    const int chunks = k / 32, groups = k / group;  // chunk c's group: c >> chunk_shift (group = 32 << shift)
    const uint4* wr[R];
    const unsigned int* szr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = min(row0 + r, n - 1);  // rows past n read row n - 1 and are not stored
        wr[r] = w + (size_t)row * chunks;
        szr[r] = sz + (size_t)row * groups;
    }
    float out[R];
#pragma unroll
    for (int r = 0; r < R; ++r) out[r] = 0.f;

    for (int c0 = lane; c0 < chunks; c0 += 32 * U) {
        uint4 wv[U][R], xv[U][4];
        unsigned int szv[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u) {  // every load of U steps first
            const int c = c0 + 32 * u;
            const bool ok = c < chunks;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                wv[u][r] = ok ? load_codes(wr[r] + c) : make_uint4(0, 0, 0, 0);
                szv[u][r] = ok ? __ldg(szr[r] + (c >> chunk_shift)) : 0u;
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) xv[u][j] = ok ? __ldg(x + 4 * c + j) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float xf[32];
            float xsum = 0.f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const unsigned int pr[4] = {xv[u][j].x, xv[u][j].y, xv[u][j].z, xv[u][j].w};
#pragma unroll
                for (int p = 0; p < 4; ++p) {
                    xf[8 * j + 2 * p] = lo_bf16(pr[p]);
                    xf[8 * j + 2 * p + 1] = hi_bf16(pr[p]);
                    xsum += xf[8 * j + 2 * p] + xf[8 * j + 2 * p + 1];
                }
            }
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const unsigned int ws[4] = {wv[u][r].x, wv[u][r].y, wv[u][r].z, wv[u][r].w};
                float acc0 = 0.f, acc1 = 0.f;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    // even inputs' codes to bits 3..6 of each byte, odd inputs' likewise; 0x80 = 1.0's exponent bit
                    const unsigned int be = ((ws[j] << 3) & 0x78787878u) | 0x80808080u;
                    const unsigned int bo = ((ws[j] >> 1) & 0x78787878u) | 0x80808080u;
#pragma unroll
                    for (int p = 0; p < 4; ++p) {
                        acc0 = fmaf(xf[8 * j + 2 * p], code(be, p), acc0);
                        acc1 = fmaf(xf[8 * j + 2 * p + 1], code(bo, p), acc1);
                    }
                }
                const float s = lo_bf16(szv[u][r]), z = hi_bf16(szv[u][r]);
                out[r] = fmaf(16.f * s, (acc0 + acc1) - xsum, fmaf(z, xsum, out[r]));
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float v = out[r];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == r && row0 + r < n) {
            const unsigned int b = __float_as_uint(v);
            y[row0 + r] = (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);  // to bf16, nearest even
        }
    }
}
"""


@dataclass(frozen=True)
class LaunchConfig:
    rows: int  # R: output rows per warp (x is converted once for all of them)
    steps: int  # U: 16-byte chunks per lane and row loaded before any is used
    warps: int  # warps per block
    stream: bool = False  # codes loaded past L1 (ld.global.nc.L1::no_allocate)


CONFIGS = tuple(LaunchConfig(*c, stream) for stream in (False, True) for c in (
    (1, 4, 4), (2, 2, 4), (2, 4, 4), (4, 1, 4), (4, 2, 4), (1, 8, 4), (2, 2, 8), (4, 2, 8), (1, 4, 8), (8, 1, 4),
))
_KERNELS: dict[tuple, object] = {}  # (config, device index) -> compiled kernel
_BEST: dict[tuple, LaunchConfig] = {}
_COMPILE_ERRORS: dict[int, str | None] = {}  # device index -> why NVRTC could not build the kernel (None: it did)


def unavailable(device: torch.device) -> str | None:
    """Why the kernel cannot run on `device` (None: it can). On CUDA this compiles one config, once per process."""
    if device.type != "cuda" or torch.version.cuda is None or not hasattr(torch.cuda, "_compile_kernel"):
        return f"needs a CUDA GPU and a torch with NVRTC kernels (torch.cuda._compile_kernel); device is {device}"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _COMPILE_ERRORS:
        try:
            _kernel(CONFIGS[0], torch.device("cuda", index))
            _COMPILE_ERRORS[index] = None
        except Exception as e:  # noqa: BLE001 - NVRTC missing or rejecting: the reason goes to the caller
            _COMPILE_ERRORS[index] = f"NVRTC could not build it: {str(e).strip().splitlines()[0][:200]}"
    return _COMPILE_ERRORS[index]


def available(device: torch.device) -> bool:
    return unavailable(device) is None


def fits(in_features: int, group_size: int) -> bool:
    """K in whole groups, and the group a power-of-two number of 32-input chunks."""
    chunks, rest = divmod(group_size, CHUNK)
    return rest == 0 and chunks & (chunks - 1) == 0 and in_features % group_size == 0


def interleave(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """(N, K/G) bf16 scales and zeros -> (N, K/G) int32, scale in the low 16 bits (one load per chunk)."""
    pairs = torch.stack([scales.to(torch.bfloat16), zeros.to(torch.bfloat16)], dim=-1).contiguous()
    return pairs.view(torch.int32).squeeze(-1)


def codes_as_floats(weight: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 stored codes -> (N, K) fp32 f = 1 + q/16, by the kernel's bit operations (for tests)."""
    words = weight.contiguous().view(torch.int32).long() & 0xFFFFFFFF  # (N, K/8), nibble i = input 8j + i
    halves = [((words << 3) & 0x78787878) | 0x80808080, ((words >> 1) & 0x78787878) | 0x80808080]  # even, odd
    out = torch.empty(*words.shape, 4, 2, dtype=torch.float32)
    for p in range(4):
        for h, b in enumerate(halves):  # PRMT: bytes (0x00, 0x00, byte p of b, 0x3f)
            bits = 0x3F000000 | (((b >> (8 * p)) & 0xFF) << 16)
            out[..., p, h] = bits.to(torch.int32).view(torch.float32)
    return out.view(weight.shape[0], -1)


def reference(x: torch.Tensor, weight: torch.Tensor, pairs: torch.Tensor, group: int) -> torch.Tensor:
    """The kernel's arithmetic in torch, fp32 (CPU or GPU): x (1, K), weight (N, K/2) uint8, pairs from
    `interleave` -> (1, N) fp32, before the kernel's rounding to bf16."""
    n, k = weight.shape[0], weight.shape[1] * 2
    xf = x.to(torch.bfloat16).float().view(k // CHUNK, CHUNK)
    f = codes_as_floats(weight.cpu()).to(x.device).view(n, k // CHUNK, CHUNK)
    acc, xsum = (f * xf).sum(-1), xf.sum(-1)  # (N, K/32), (K/32,)
    bits = pairs.long() & 0xFFFFFFFF
    s = ((bits & 0xFFFF) << 16).to(torch.int32).view(torch.float32).repeat_interleave(group // CHUNK, dim=1)
    z = (bits & 0xFFFF0000).to(torch.int32).view(torch.float32).repeat_interleave(group // CHUNK, dim=1)
    return (16 * s * (acc - xsum) + z * xsum).sum(-1)[None]


def source(cfg: LaunchConfig) -> str:
    return (_SOURCE.replace("__R__", str(cfg.rows)).replace("__U__", str(cfg.steps))
            .replace("__WARPS__", str(cfg.warps)).replace("__STREAM__", str(int(cfg.stream))))


def _kernel(cfg: LaunchConfig, device: torch.device):
    key = (cfg, device.index)
    if key not in _KERNELS:
        with torch.cuda.device(device):
            _KERNELS[key] = torch.cuda._compile_kernel(source(cfg), "int4_gemv_m1")
    return _KERNELS[key]


def _launch(cfg: LaunchConfig, x: torch.Tensor, weight: torch.Tensor, sz: torch.Tensor, group: int) -> torch.Tensor:
    n, k = weight.shape[0], weight.shape[1] * 2
    y = torch.empty(1, n, dtype=torch.bfloat16, device=x.device)
    per_block = cfg.rows * cfg.warps
    _kernel(cfg, x.device)(grid=(-(-n // per_block), 1, 1), block=(32 * cfg.warps, 1, 1),
                           args=[weight, sz, x, y, n, k, group, (group // CHUNK).bit_length() - 1])
    return y


def _tune(x: torch.Tensor, weight: torch.Tensor, sz: torch.Tensor, group: int) -> LaunchConfig:
    sets = gemv.copies_past_l2((weight, sz), x.device)
    n, k = weight.shape[0], weight.shape[1] * 2
    best, _ = gemv.fastest(CONFIGS, lambda cfg: [lambda t=t: _launch(cfg, x, *t, group) for t in sets],
                           f"cuda int4 gemv N={n} K={k} G={group}")  # every config's time: gemv.TUNED
    return best


@torch.library.custom_op("vlmslim::int4_gemv_cuda", mutates_args=())
def int4_gemv_cuda(x: torch.Tensor, weight: torch.Tensor, sz: torch.Tensor, group: int) -> torch.Tensor:
    """x (1, K) bf16, weight (N, K/2) uint8, sz (N, K/G) int32 from `interleave` -> (1, N) bf16."""
    n, k = weight.shape[0], weight.shape[1] * 2
    x = x.to(torch.bfloat16).contiguous()
    if x.data_ptr() % 16:  # read as 16-byte vectors
        x = x.clone()
    cfg = gemv.tuned(_BEST, (n, k, group, x.device.index), lambda: _tune(x, weight, sz, group),
                     f"cuda int4 gemv {n}x{k}")
    return _launch(cfg, x, weight, sz, group)


@int4_gemv_cuda.register_fake
def _(x, weight, sz, group):
    return x.new_empty(1, weight.shape[0], dtype=torch.bfloat16)
