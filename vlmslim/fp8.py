"""Fp8 (e4m3) weight-only Linear: one fp32 scale per output row, bf16 activations, Hopper-class GPUs.

Decode rows (at most `gemv.MAX_ROWS`) go through vlmslim's Triton GEMV (`vlmslim.gemv.w8_gemv`): it
reads the 1-byte weights once and converts them in registers. cuBLAS' fp8 GEMM (`torch._scaled_mm`)
also quantizes the activations and, measured on an H200 (docs/lowbit_kernels.md), is no faster than
fp16 at batch 1-8. Prefill rows are a GEMM on dequantised bf16 weights.

Storage (what `save_pretrained` writes), per Linear of shape (N, K):
    weight        (N*K,) float8_e4m3fn   flat codes; w = codes (N, K) * weight_scale[:, None]
    weight_scale  (N,)   fp32            amax of the row / 448 (e4m3's largest normal)
"""

from __future__ import annotations

import torch
from torch import nn

from vlmslim import gemv

KIND = "fp8wo"  # the census kind
QUANT_METHOD = "vlmslim-fp8wo"  # config.json marker: stock from_pretrained refuses, vlmslim.load_model rebuilds
E4M3_MAX = 448.0
MIN_CAPABILITY = (8, 9)  # fp8 conversion instructions: Ada and Hopper or newer


def device_error(device: torch.device | str) -> str | None:
    """Why fp8 cannot run on `device` (None: it can)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"fp8 needs an NVIDIA GPU of compute capability >= 8.9 (Ada, Hopper or newer); got {device.type}"
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        return (f"fp8 needs compute capability >= 8.9 (Ada, Hopper or newer); "
                f"{torch.cuda.get_device_name(device)} is {cap[0]}.{cap[1]}")
    return None


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> (codes (N, K) float8_e4m3fn, scale (N,) fp32), absmax per row."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / E4M3_MAX).clamp(min=1e-12)
    return (w / scale[:, None]).to(torch.float8_e4m3fn), scale


class Fp8WeightOnlyLinear(nn.Module):
    """y = x @ (codes * scale)^T + b with 1-byte weights (e4m3 here; `vlmslim.int8wo` subclasses it)."""

    CODE_DTYPE = torch.float8_e4m3fn

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None, bias_dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # flat (N*K,): a stock from_pretrained of the dir fails on the shape instead of loading codes as floats
        self.register_buffer("weight", torch.zeros(out_features * in_features, dtype=self.CODE_DTYPE,
                                                   device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device), requires_grad=False)
                     if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Fp8WeightOnlyLinear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device,
                bias_dtype=linear.bias.dtype if linear.bias is not None else linear.weight.dtype)
        codes, scale = m.quantize_weight(linear.weight)
        m.weight.copy_(codes.flatten())
        m.weight_scale.copy_(scale)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.data)
        return m

    @staticmethod
    def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_weight(w)

    def codes(self) -> torch.Tensor:
        return self.weight.view(self.out_features, self.in_features)  # (N, K)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.codes().to(torch.float32) * self.weight_scale[:, None]).to(dtype)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        # model.half() / .to(dtype) casts every floating buffer, fp8 included: keep the stored precisions
        # (e4m3 -> fp16 / bf16 / fp32 and back is exact; the scale's fp32 -> fp16 -> fp32 may round).
        if self.weight.dtype != self.CODE_DTYPE:
            self.weight = self.weight.to(self.CODE_DTYPE)
        if self.weight_scale.dtype != torch.float32:
            self.weight_scale = self.weight_scale.float()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (M, K)
        if x2.shape[0] <= gemv.MAX_ROWS and gemv.available(x2.device):
            y = torch.ops.vlmslim.w8_gemv(x2.to(torch.bfloat16), self.codes(), self.weight_scale)
        else:  # prefill (compute-bound) and devices without the kernel
            y = self._dense(x2)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _dense(self, x2: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x2.to(torch.bfloat16), self.dequantized(torch.bfloat16))  # (M, N)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
