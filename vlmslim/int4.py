"""Int4 weight-only Linear: batch-1 decode on vlmslim's CUDA GEMV, more rows on ATen's tinygemm (`set_kernel`).

Decode GEMVs (rows of x <= GEMV_MAX_ROWS), by `kernel`:
    "auto" (default)  `vlmslim.gemv_cuda` (CUDA C compiled by NVRTC, reads the stored codes in place) for one row
                      of x where it runs (a CUDA GPU whose torch has NVRTC kernels, a group of 32 x 2^i), ATen's
                      tinygemm (`torch._weight_int4pack_mm`, CUDA and CPU; ships with torch, so no torchao version
                      has to match the installed torch) for more rows and everywhere else. On one H100 the
                      CUDA GEMV takes 6.2 / 12.6 / 20.2 / 13.6 us where tinygemm takes 6.9 / 15.9 / 26.0 / 14.6
                      us (LLaVA-7B's o, q|k|v, gate|up, down; docs/lowbit_kernels.md).
    "cuda"            the same, refused where it cannot run; "tinygemm" tinygemm only;
    "triton"          `vlmslim.gemv.int4_gemv` (slower than both, kept for comparison);
    "gemlite"         the optional `gemlite` package's GEMV (Triton, CUDA only; `pip install gemlite`), built from
                      the same stored codes.
Prefill rows are a GEMM on dequantised bf16 weights.

Storage (what `save_pretrained` writes; device independent), per Linear of shape (N, K), group size G:
    weight  (N, K/2) uint8   two 4-bit codes per byte, even k in the low nibble (named `weight` so that a
                             stock `from_pretrained` of the dir fails on the shape instead of loading noise)
    scales  (N, K/G) bf16    w = q * scale + zero  (asymmetric, per group of G inputs)
    zeros   (N, K/G) bf16
The kernels' layouts are derived from these whenever the module moves (`_apply`) and are not saved.

Split K (`k_split = S`, tinygemm only): tinygemm's decode is short of parallel work on the 4096-row matrices
(o_proj, down_proj read at 1.2-1.5 TB/s of 3.0, docs/lowbit_kernels.md). Its layout can hold the S column blocks
of W stacked as rows, W' = [W[:, :K/S]; ...; W[:, (S-1)K/S:]] of shape (S*N, K/S), with x reshaped to (S*M, K/S):
Y' = x' @ W'^T holds every block's partial product, and y = the sum over s of Y'[s-th row, s-th block]
(fused by inductor into the next kernel). The same bytes are read by S times as many output tiles; the
wasted products cost nothing at M <= 16 (tinygemm computes 16 rows per tile anyway). Measured on one H100
(docs/performance.md): slower at every decoder shape (4096 x 4096: 6.9 -> 7.6 us with S = 2), so S = 1 stays the
default; the layout is kept for other GPUs and shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmslim import gemv, gemv_cuda

GROUP_SIZES = (32, 64, 128, 256)
# tinygemm is a GEMV kernel: measured on an H200 it makes a 592-token LLaVA prefill 4.6x slower than fp16
# (docs/performance.md). Above this many rows the weights are dequantised on the fly for a bf16 GEMM.
GEMV_MAX_ROWS = 16
KIND = "int4wo"  # the census kind
# decode GEMV (rows <= GEMV_MAX_ROWS). "cuda" takes one row of x and leaves more to tinygemm; "auto" is "cuda" where
# it runs (a CUDA GPU, NVRTC, a power-of-two group of 32s) and tinygemm elsewhere
KERNELS = ("auto", "tinygemm", "triton", "gemlite", "cuda")
DEFAULT_KERNEL = "auto"  # measured: docs/lowbit_kernels.md, docs/performance.md
K_SPLITS = (1, 2, 4)
TINYGEMM_K_TILE = 128  # tinygemm's packing (8 inner k-tiles of 16) takes K in multiples of this


def k_split_fits(in_features: int, group_size: int, split: int) -> bool:
    """Whether K/split is whole groups and whole tinygemm k-tiles."""
    part, rest = divmod(in_features, split)
    return rest == 0 and part % group_size == 0 and part % TINYGEMM_K_TILE == 0


def split_blocks(t: torch.Tensor, split: int) -> torch.Tensor:
    """(N, C) -> (split*N, C/split): the column blocks of `t` stacked as rows (block s = columns s*C/split...)."""
    n, c = t.shape
    return t.reshape(n, split, c // split).transpose(0, 1).reshape(split * n, c // split)


def quantize_weight(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) float -> (codes (N, K) uint8 in 0..15, scales (N, K/G), zeros (N, K/G)), min-max per group."""
    n, k = w.shape
    g = w.detach().float().view(n, k // group, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    codes = ((g - lo) / scale).round().clamp(0, 15).to(torch.uint8).view(n, k)
    return codes, scale.squeeze(-1), lo.squeeze(-1)


def pack(codes: torch.Tensor) -> torch.Tensor:
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()  # (N, K/2)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)  # (N, K) codes


class Int4WeightOnlyLinear(nn.Module):
    """y = x @ dequant(W)^T + b with W in 4 bits; activations run in bf16 through tinygemm."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int = 128,
                 device=None, dtype=torch.bfloat16, bias_dtype=torch.float32):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"in_features {in_features} is not a multiple of the group size {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device), requires_grad=False)
                     if bias else None)
        self._packed: torch.Tensor | None = None  # the kernel's layout on the current device (not saved)
        self._scales_zeros: torch.Tensor | None = None
        self._sz: torch.Tensor | None = None  # kernel "cuda": (N, K/G) int32 scale|zero pairs (vlmslim.gemv_cuda)
        self._gemlite: nn.Module | None = None  # gemlite's layer (kernel "gemlite" on CUDA; not a submodule)
        self.kernel = DEFAULT_KERNEL  # decode GEMV, one of KERNELS (docs/lowbit_kernels.md)
        self.k_split = 1  # tinygemm's split-K layout (module docstring); `set_k_split`; a layout, not saved

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> "Int4WeightOnlyLinear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size,
                device=linear.weight.device,
                bias_dtype=linear.bias.dtype if linear.bias is not None else linear.weight.dtype)
        codes, scale, zero = quantize_weight(linear.weight, group_size)
        m.weight.copy_(pack(codes))
        m.scales.copy_(scale)
        m.zeros.copy_(zero)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.data)
        m.prepare()
        return m

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, K) weights in `dtype` as the kernels see them."""
        n, k, g = self.out_features, self.in_features, self.group_size
        codes = unpack(self.weight).to(dtype).view(n, k // g, g)
        return (codes * self.scales.to(dtype)[..., None] + self.zeros.to(dtype)[..., None]).view(n, k)

    def set_kernel(self, kernel: str) -> "Int4WeightOnlyLinear":
        """Choose the decode GEMV (one of KERNELS) and derive its layout now (outside any CUDA-graph capture).
        A kernel that cannot run here raises before the module changes."""
        if kernel not in KERNELS:
            raise ValueError(f"unknown int4wo kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        if kernel == "cuda":
            _check_cuda_kernel(self)
        self.prepare(kernel)
        return self

    def set_k_split(self, split: int) -> "Int4WeightOnlyLinear":
        """Derive tinygemm's layout with K split `split` ways (one of K_SPLITS); raises before changing anything
        when K/split is not whole groups and tinygemm k-tiles."""
        if split not in K_SPLITS:
            raise ValueError(f"k_split must be one of {', '.join(map(str, K_SPLITS))}, got {split}")
        if not k_split_fits(self.in_features, self.group_size, split):
            raise ValueError(f"k_split {split} needs in_features/{split} to be a multiple of the group size "
                             f"{self.group_size} and of {TINYGEMM_K_TILE}; in_features is {self.in_features}")
        self.prepare(self.kernel, k_split=split)
        return self

    def gemlite_meta(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes (N, K) uint8, scales (N, K/G), z (N, K/G) fp32) in HQQ's convention w = (q - z) * scale,
        the form gemlite packs: z = -zero / scale."""
        return unpack(self.weight), self.scales, -self.zeros.float() / self.scales.float()

    @torch.no_grad()
    def prepare(self, kernel: str | None = None, k_split: int | None = None) -> None:
        """Derive `kernel`'s layout (default: the current one) from the stored tensors: tinygemm's packed weight
        and (K/G, N, 2) scales-and-zeros (with K split `k_split` ways: (S*N, K/S) and (K/(G*S), S*N, 2)), or
        gemlite's layer; kernel "cuda" adds its scale|zero pairs on CUDA. Everything is built first and assigned
        last."""
        kernel = kernel or self.kernel
        split = k_split or self.k_split
        gem = packed = scales_zeros = pairs = None
        if not self.weight.is_meta:
            if self.weight.is_cuda and (kernel == "cuda" or kernel == "auto" and self._cuda_kernel_runs()):
                pairs = gemv_cuda.interleave(self.scales, self.zeros)  # the codes are read where they are stored
            if kernel == "gemlite":
                gem = _gemlite_layer(self)  # one derived copy of the weights is enough: no tinygemm layout
            else:
                codes = split_blocks(unpack(self.weight), split)  # (S*N, K/S) uint8
                scales, zeros = split_blocks(self.scales.float(), split), split_blocks(self.zeros.float(), split)
                # tinygemm: w = (q - 8) * scale + zero', so zero' = zero + 8 * scale
                sz = torch.stack([scales, zeros + 8 * scales], dim=-1)
                scales_zeros = sz.transpose(0, 1).contiguous().to(torch.bfloat16)  # (K/(G*S), S*N, 2)
                if self.weight.device.type == "cuda":
                    tiny = (codes[:, 0::2] << 4 | codes[:, 1::2]).contiguous()  # CUDA packing: even k high
                    packed = torch._convert_weight_to_int4pack(tiny, 8)
                else:
                    packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
        self.kernel, self.k_split, self._packed, self._scales_zeros = kernel, split, packed, scales_zeros
        self._sz = pairs
        # not through nn.Module.__setattr__: a derived layout, not a submodule (kept out of the state_dict)
        object.__setattr__(self, "_gemlite", gem)

    def release(self) -> None:
        """Drop every derived kernel layout (`prepare()` rebuilds them); fusion does while these rows are fused."""
        self._packed = self._scales_zeros = self._sz = None
        object.__setattr__(self, "_gemlite", None)

    def _cuda_kernel_runs(self) -> bool:
        return gemv_cuda.fits(self.in_features, self.group_size) and gemv_cuda.available(self.weight.device)

    @property
    def decode_kernel(self) -> str:
        """The kernel a batch-1 decode step runs here, read from the layouts `forward` dispatches on ("auto"
        resolved; a "cuda" or "gemlite" module moved to a CPU decodes on tinygemm)."""
        if self._sz is not None:
            return "cuda"
        if self.kernel == "triton":
            return "triton"
        return "gemlite" if self._gemlite is not None else "tinygemm"

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.prepare()  # moved or cast: re-derive the kernel layout on the new device
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # (M, K)
        if x2.shape[0] > GEMV_MAX_ROWS:  # prefill: compute-bound, a GEMM on dequantised bf16 weights
            y = torch.nn.functional.linear(x2, self.dequantized(torch.bfloat16))
        elif self._sz is not None and x2.shape[0] == 1 and x2.is_cuda:  # kernel "cuda": batch-1 decode
            y = torch.ops.vlmslim.int4_gemv_cuda(x2, self.weight, self._sz, self.group_size)
        elif self._use_triton(x2):
            y = torch.ops.vlmslim.int4_gemv(x2, self.weight, self.scales, self.zeros, self.group_size)
        elif self._gemlite is not None:
            y = self._gemlite(x2)  # (M, N) bf16
        else:
            y = self._tinygemm(x2)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _tinygemm(self, x2: torch.Tensor) -> torch.Tensor:
        m, k = x2.shape
        split, n = self.k_split, self.out_features
        xs = x2.reshape(m * split, k // split)  # row m*S + s: block s of row m
        mm = torch._weight_int4pack_mm if x2.device.type == "cuda" else torch._weight_int4pack_mm_for_cpu
        y = mm(xs, self._packed, self.group_size, self._scales_zeros)  # (M*S, S*N), bf16
        if split == 1:
            return y
        # row m*S + s times block s's rows: the diagonal of (M, S, S, N) over the two S axes, summed in fp32
        return y.view(m, split, split, n).diagonal(dim1=1, dim2=2).sum(-1, dtype=torch.float32).to(y.dtype)

    def _use_triton(self, x2: torch.Tensor) -> bool:
        if self.kernel != "triton" or x2.shape[0] > gemv.MAX_ROWS:
            return False
        if not gemv.available(x2.device):
            raise RuntimeError(f"int4wo kernel 'triton' needs Triton and a CUDA device (input on {x2.device})")
        return True

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"kernel={self.kernel}" + (f", k_split={self.k_split}" if self.k_split > 1 else ""))


def decode_kernels(model: nn.Module) -> dict[str, int]:
    """How many int4 layers decode a batch-1 step on each kernel ({} without int4 layers), for the results."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, Int4WeightOnlyLinear):
            counts[m.decode_kernel] = counts.get(m.decode_kernel, 0) + 1
    return counts


def _check_cuda_kernel(m: Int4WeightOnlyLinear) -> None:
    """Kernel "cuda" (vlmslim.gemv_cuda) needs CUDA weights, NVRTC and a group of a power-of-two 32-input chunks."""
    why = gemv_cuda.unavailable(m.weight.device)
    if why:
        raise RuntimeError(f"int4wo kernel 'cuda' {why}")
    if not gemv_cuda.fits(m.in_features, m.group_size):
        raise ValueError(f"int4wo kernel 'cuda' needs a group size of {gemv_cuda.CHUNK} times a power of two; "
                         f"got {m.group_size}")


def _gemlite_layer(m: Int4WeightOnlyLinear) -> nn.Module:
    """gemlite's A16W4 layer over `m`'s codes, bf16 activations (as tinygemm's); imported only here: gemlite
    reads the CUDA device's name when it is imported."""
    if m.weight.device.type != "cuda":
        raise RuntimeError(f"int4wo kernel 'gemlite' runs on CUDA GPUs only (weights on {m.weight.device})")
    try:
        import gemlite
    except ImportError as e:
        raise RuntimeError(f"int4wo kernel 'gemlite' needs the gemlite package (pip install gemlite): {e}") from e
    layer = gemlite.GemLiteLinear(4, group_size=m.group_size, in_features=m.in_features,
                                  out_features=m.out_features, input_dtype=gemlite.DType.BF16,
                                  output_dtype=gemlite.DType.BF16)
    codes, scales, z = m.gemlite_meta()
    # fma mode: the kernel computes q * scale + zero' with zero' = -z * scale, i.e. our stored zero
    layer.pack(codes, scales.to(torch.bfloat16), z, bias=None, fma_mode=True)
    groups = m.in_features // m.group_size
    if tuple(layer.zeros.shape) != (groups, m.out_features):
        raise RuntimeError(f"gemlite {gemlite.__version__}: unexpected zeros layout {tuple(layer.zeros.shape)}")
    # our bf16 zeros exactly (not -z * scale rounded again), in gemlite's (K/G, N) layout
    layer.zeros = nn.Parameter(m.zeros.to(torch.bfloat16).t().contiguous(), requires_grad=False)
    return layer
