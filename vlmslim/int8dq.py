"""Int8 dynamic quantization: int8 weights (one scale per output row) and int8 activations quantized per
call, for fast CPU inference — what seed 003 did with `torch.quantization.quantize_dynamic`, as a recipe
whose checkpoints save and reload.

On the CPU the product runs on PyTorch's x86/fbgemm kernel (`torch.ops.quantized.linear_dynamic`), which
quantizes the activations itself; measured on 2 cores (docs/quantization.md) it is 2.5-4.7x faster than
fp32 on BLIP-base's 768/3072-wide Linears. Elsewhere (GPUs) the same arithmetic is emulated in bf16
(quantize-dequantize of the activations, dequantised weights): right numbers, no speed-up.

Storage (what `save_pretrained` writes), per Linear of shape (N, K):
    weight        (N*K,) int8   flat codes, symmetric: w = codes (N, K) * weight_scale[:, None]
    weight_scale  (N,)   fp32   amax of the row / 127
The kernel's packed form is derived whenever the module moves (`_apply`) and is not saved.
"""

from __future__ import annotations

import itertools
import warnings
import weakref

import torch
from torch import nn

KIND = "int8dq"  # the census kind
QUANT_METHOD = "vlmslim-int8dq"  # config.json marker: stock from_pretrained refuses, vlmslim.load_model rebuilds


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> (codes (N, K) int8 in -127..127, scale (N,) fp32), absmax per row."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


# fbgemm's dynamic linear with reduce_range=True quantizes activations to 0..127 (7 bits) so that its
# int16 pair-sums cannot overflow; the emulation does the same.
ACT_LEVELS = 127


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """x after asymmetric per-tensor quantize-dequantize to ACT_LEVELS steps (fbgemm's dynamic scheme)."""
    lo = x.amin().clamp(max=0)
    hi = x.amax().clamp(min=0)
    scale = ((hi - lo) / ACT_LEVELS).clamp(min=1e-12)
    zero = (-lo / scale).round()
    return ((x / scale + zero).round().clamp(0, ACT_LEVELS) - zero) * scale


# The x86 kernel takes its packed weight as a TorchScript object, which torch.compile cannot trace: the
# custom op below carries an integer handle instead (a constant to dynamo), so a decode step stays one graph.
_MODULES: dict[int, weakref.ref] = {}  # a plain dict: dynamo traces it (a WeakValueDictionary breaks the graph)
_HANDLES = itertools.count()


@torch.library.custom_op("vlmslim::int8dq_linear", mutates_args=())
def int8dq_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """x (M, K) fp32 -> (M, N) fp32 through the packed weight of module `handle` (bias included)."""
    return torch.ops.quantized.linear_dynamic(x, _MODULES[handle]()._packed, True)


@int8dq_linear.register_fake
def _(x, handle, out_features):
    return x.new_empty(x.shape[0], out_features)


class Int8DynamicLinear(nn.Module):
    """y = dynamic_int8(x) @ (codes * scale)^T + b."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None, bias_dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # flat (N*K,): a stock from_pretrained of the dir fails on the shape instead of loading codes as floats
        self.register_buffer("weight", torch.zeros(out_features * in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device), requires_grad=False)
                     if bias else None)
        self._packed = None  # the x86/fbgemm kernel's packed weight on the CPU (not saved)
        self._register()

    def _register(self) -> None:
        self._handle = next(_HANDLES)
        _MODULES[self._handle] = weakref.ref(self)
        weakref.finalize(self, _MODULES.pop, self._handle, None)  # the entry goes with the module

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8DynamicLinear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device,
                bias_dtype=linear.bias.dtype if linear.bias is not None else linear.weight.dtype)
        codes, scale = quantize_weight(linear.weight)
        m.weight.copy_(codes.flatten())
        m.weight_scale.copy_(scale)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.data)
        m.prepare()
        return m

    def codes(self) -> torch.Tensor:
        return self.weight.view(self.out_features, self.in_features)  # (N, K)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.codes().float() * self.weight_scale[:, None]).to(dtype)

    def release(self) -> None:
        """Drop the derived kernel layout (`prepare()` rebuilds it); fusion does while these rows are fused."""
        self._packed = None

    @torch.no_grad()
    def prepare(self) -> None:
        self.release()
        if self.weight.is_meta or self.weight.device.type != "cpu":
            return
        n = self.out_features
        with warnings.catch_warnings():  # "quantized tensor creation functions ... are deprecated" (torch 2.13)
            warnings.simplefilter("ignore")
            qweight = torch._make_per_channel_quantized_tensor(self.codes(), self.weight_scale.double(),
                                                               torch.zeros(n, dtype=torch.long), 0)
            bias = self.bias.detach().float() if self.bias is not None else None
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.weight_scale.dtype != torch.float32:  # model.half() casts floating buffers: keep fp32 scales
            self.weight_scale = self.weight_scale.float()
        self.prepare()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self._packed is not None and x2.device.type == "cpu":
            ref = _MODULES.get(self._handle)
            if ref is None or ref() is not self:  # a deepcopy carries its original's handle: take its own
                self._register()
            y = torch.ops.vlmslim.int8dq_linear(x2.float().contiguous(), self._handle, self.out_features)
        else:
            y = torch.nn.functional.linear(fake_quantize(x2.float()).to(torch.bfloat16),
                                           self.dequantized(torch.bfloat16)).float()
            if self.bias is not None:
                y = y + self.bias.float()
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
