"""Int8 weight-only Linear: one fp32 scale per output row, activations untouched (bf16 on GPUs).

The same storage and kernels as `vlmslim.fp8` with int8 codes: decode rows on CUDA go through vlmslim's
Triton GEMV (`vlmslim.gemv.w8_gemv`, which converts either 1-byte type in registers); on the CPU through
ATen's `torch._weight_int8pack_mm`. ATen's CUDA int8 weight-only kernel is not used: measured 6-40x
slower than fp16 on an H200 (docs/lowbit_kernels.md).

Storage: weight (N*K,) int8 (flat codes, symmetric: w = codes (N, K) * weight_scale[:, None]),
weight_scale (N,) fp32 = amax of the row / 127.
"""

from __future__ import annotations

import torch

from vlmslim.fp8 import Fp8WeightOnlyLinear
from vlmslim.int8dq import quantize_weight

KIND = "int8wo"  # the census kind
QUANT_METHOD = "vlmslim-int8wo"  # config.json marker: stock from_pretrained refuses, vlmslim.load_model rebuilds


class Int8WeightOnlyLinear(Fp8WeightOnlyLinear):
    """y = x @ (codes * scale)^T + b with int8 codes."""

    CODE_DTYPE = torch.int8

    @staticmethod
    def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_weight(w)

    def _dense(self, x2: torch.Tensor) -> torch.Tensor:
        if x2.device.type == "cpu":  # fp32 activations, as the float model had them
            return torch._weight_int8pack_mm(x2.float(), self.codes(), self.weight_scale)
        return super()._dense(x2)
