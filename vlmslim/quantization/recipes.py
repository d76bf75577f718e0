"""Quantization recipes: what one method (bitsandbytes, or vlmslim's own int4wo / fp8 / int8wo / int8dq modules)
does to one exact `nn.Linear`, as validated settings.

A recipe knows (1) the bnb module that replaces a Linear (quantized when moved to the device), (2) the
`BitsAndBytesConfig` that makes stock `from_pretrained` rebuild the same modules on reload, (3) the
bytes one quantized Linear takes on disk, and (4) which weight shapes its kernels accept.
`RECIPES` maps the CLI names to constructors; `recipe_from_bits` maps `--bits/--quant-type` onto them.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Union

import torch
from torch import nn

from vlmslim import fp8, int8dq, int8wo
from vlmslim.int4 import GROUP_SIZES, Int4WeightOnlyLinear
from vlmslim.int4 import KIND as INT4_KIND
from vlmslim.loading.quantized import INT4_QUANT_METHOD, empty_bnb_linear

logger = logging.getLogger(__name__)

COMPUTE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_BLOCK_4BIT = 64  # bnb's default 4-bit blocksize (one absmax per 64 weights); transformers uses the same
_BLOCK_NESTED = 256  # double quant: one fp32 absmax per 256 quantized absmax values
_OFFSET_REPR = 19  # len(repr(float)) of the double-quant offset in its JSON blob: data dependent, 17-20


class _OncePerMessage(logging.Filter):
    """bnb logs "MatMul8bitLt: inputs will be cast ..." on every int8 layer of every forward; once is enough."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        new = msg not in self.seen
        self.seen.add(msg)
        return new


_BNB_MATMUL_LOG = logging.getLogger("bitsandbytes.autograd._functions")
if not any(isinstance(f, _OncePerMessage) for f in _BNB_MATMUL_LOG.filters):
    _BNB_MATMUL_LOG.addFilter(_OncePerMessage())


def _bnb():
    import bitsandbytes as bnb  # imported late: it logs at import and is only needed when quantizing

    return bnb


@dataclass(frozen=True)
class Int8Recipe:
    """LLM.int8(): int8 weights with one fp32 scale per output row; activations above `int8_threshold`
    go through an fp16 side path (0 = pure int8, no outlier decomposition)."""

    int8_threshold: float = 6.0
    bits: ClassVar[int] = 8
    shape_rule: ClassVar[str] = "any shape"

    def __post_init__(self):
        t = self.int8_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"int8_threshold (--int8-threshold) must be a number >= 0, got {t!r}")

    @property
    def name(self) -> str:
        return "int8"

    @property
    def kind(self) -> str:  # the census kind of the layers it produces
        return "int8"

    def params(self) -> dict:
        return {"name": self.name, "bits": 8, "int8_threshold": float(self.int8_threshold)}

    def resolved(self, model_dtype: torch.dtype) -> Int8Recipe:
        return self  # int8 computes in the input's dtype: nothing to resolve

    def shape_error(self, out_features: int, in_features: int) -> str | None:
        return None  # measured: bnb 0.50 int8 runs any shape on CPU and GPU

    def device_error(self, device: torch.device) -> str | None:
        return None

    def empty_module(self, linear: nn.Linear) -> nn.Module:
        return empty_bnb_linear(self.params(), linear)

    def quantize_linear(self, linear: nn.Linear, device) -> nn.Module:
        bnb = _bnb()
        module = self.empty_module(linear)
        # Int8Params quantizes in `.to()` only when its float data sits on the CPU (bnb 0.50), so a weight
        # already on the GPU goes through the CPU once.
        module.weight = bnb.nn.Int8Params(linear.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
        if linear.bias is not None:
            module.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        return module.to(device)

    def quantization_config(self, skip_modules):
        return self.bnb_config(skip_modules)

    def bnb_config(self, skip_modules):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(self.int8_threshold),
                                  llm_int8_skip_modules=list(skip_modules))

    def linear_bytes(self, out_features: int, in_features: int, weight_dtype: torch.dtype) -> dict[str, int]:
        # weight (out, in) int8 + SCB (out,) fp32 + `weight_format` (a uint8 scalar kept for old readers)
        return {"weight": out_features * in_features, "scales": 4 * out_features, "metadata": 1}


@dataclass(frozen=True)
class FourBitRecipe:
    """Blockwise 4-bit (QLoRA): one absmax per 64 weights; `double_quant` quantizes those absmax values to
    8 bits too (compress_statistics). `compute_dtype` None = the model's dtype, resolved when quantizing."""

    quant_type: str = "nf4"
    double_quant: bool = False
    compute_dtype: str | None = None
    bits: ClassVar[int] = 4
    shape_rule: ClassVar[str] = ("out_features % 32 == 0 and in_features % 64 == 0 (bitsandbytes' 4-bit CPU kernel; "
                                 "GPUs fall back to slow paths)")

    def __post_init__(self):
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant_type (--quant-type) must be 'nf4' or 'fp4', got {self.quant_type!r}")
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"double_quant (--double-quant) must be a bool, got {self.double_quant!r}")
        if self.compute_dtype is not None and self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype (--compute-dtype) must be one of {sorted(COMPUTE_DTYPES)}, "
                             f"got {self.compute_dtype!r}")

    @property
    def name(self) -> str:
        return self.quant_type

    @property
    def kind(self) -> str:
        return self.quant_type

    def params(self) -> dict:
        return {"name": self.name, "bits": 4, "quant_type": self.quant_type, "double_quant": self.double_quant,
                "compute_dtype": self.compute_dtype, "blocksize": _BLOCK_4BIT}

    def resolved(self, model_dtype: torch.dtype) -> FourBitRecipe:
        if self.compute_dtype is not None:
            return self
        names = {v: k for k, v in COMPUTE_DTYPES.items()}
        return FourBitRecipe(self.quant_type, self.double_quant, names.get(model_dtype, "float32"))

    def shape_error(self, out_features: int, in_features: int) -> str | None:
        # bnb 0.50's CPU 4-bit GEMM (the eval path) asserts "N must be divisible by block_n" or fails a
        # reshape otherwise (measured); on a GPU such layers fall back to slow kernels.
        if out_features % 32 or in_features % 64:
            return f"{out_features}x{in_features}"
        return None

    def device_error(self, device: torch.device) -> str | None:
        return None

    def _torch_compute_dtype(self):
        return COMPUTE_DTYPES[self.compute_dtype] if self.compute_dtype else None

    def empty_module(self, linear: nn.Linear) -> nn.Module:
        return empty_bnb_linear(self.params(), linear)

    def quantize_linear(self, linear: nn.Linear, device) -> nn.Module:
        bnb = _bnb()
        module = self.empty_module(linear)
        module.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, blocksize=_BLOCK_4BIT,
                                          compress_statistics=self.double_quant, quant_type=self.quant_type,
                                          quant_storage=torch.uint8, module=module)
        if linear.bias is not None:
            module.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        return module.to(device)  # Params4bit quantizes on its first move to a real device

    def quantization_config(self, skip_modules):
        return self.bnb_config(skip_modules)

    def bnb_config(self, skip_modules):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=self._torch_compute_dtype() or torch.float32,
                                  bnb_4bit_quant_storage=torch.uint8, llm_int8_skip_modules=list(skip_modules))

    def linear_bytes(self, out_features: int, in_features: int, weight_dtype: torch.dtype) -> dict[str, int]:
        n = out_features * in_features
        blocks = -(-n // _BLOCK_4BIT)
        # The non-tensor quant state is saved as a JSON blob (uint8 tensor), in bnb's key order.
        meta = {"quant_type": self.quant_type, "blocksize": _BLOCK_4BIT,
                "dtype": str(weight_dtype).removeprefix("torch."), "shape": [out_features, in_features]}
        if self.double_quant:
            meta.update(nested_blocksize=_BLOCK_NESTED, nested_dtype="float32", nested_offset=0.0)
            meta_len = len(json.dumps(meta)) - len("0.0") + _OFFSET_REPR
            # absmax: uint8 per block + nested absmax fp32 per 256 blocks + 256-entry fp32 code book
            scales = blocks + 4 * -(-blocks // _BLOCK_NESTED) + 4 * 256
        else:
            meta_len = len(json.dumps(meta))
            scales = 4 * blocks  # fp32 absmax per block
        # packed weight: two 4-bit codes per byte; quant_map: the 16-entry fp32 code book
        return {"weight": -(-n // 2), "scales": scales + 4 * 16, "metadata": meta_len}


@dataclass(frozen=True)
class _OwnModuleRecipe:
    """vlmslim's own recipes: one module class (defaults: 1-byte codes, one fp32 scale per output row, any
    shape), a `quant_method` marker that stock `from_pretrained` refuses; reload via `load_model`."""

    bits: ClassVar[int] = 8
    shape_rule: ClassVar[str] = "any shape"
    recipe_name: ClassVar[str]
    backend: ClassVar[str]
    module_kind: ClassVar[str]  # the census kind of the layers it produces
    quant_method: ClassVar[str]
    module: ClassVar[type]

    @property
    def name(self) -> str:
        return self.recipe_name

    @property
    def kind(self) -> str:
        return self.module_kind

    def params(self) -> dict:
        return {"name": self.name, "bits": 8, "backend": self.backend}

    def resolved(self, model_dtype: torch.dtype):
        return self

    def shape_error(self, out_features: int, in_features: int) -> str | None:
        return None

    def device_error(self, device: torch.device) -> str | None:
        return None

    def empty_module(self, linear: nn.Linear) -> nn.Module:
        return empty_bnb_linear(self.params(), linear)

    def quantize_linear(self, linear: nn.Linear, device) -> nn.Module:
        return self.module.from_linear(linear.to(device))

    def quantization_config(self, skip_modules) -> dict:
        return {"quant_method": self.quant_method, "modules_to_not_convert": list(skip_modules)}

    def linear_bytes(self, out_features: int, in_features: int, weight_dtype: torch.dtype) -> dict[str, int]:
        return {"weight": out_features * in_features, "scales": 4 * out_features, "metadata": 0}


@dataclass(frozen=True)
class Int4WeightOnlyRecipe(_OwnModuleRecipe):
    """Int4 weight-only (`vlmslim.int4`): 4-bit codes with a bf16 scale and zero per `group_size` inputs;
    activations in bf16; decode on ATen's tinygemm (or vlmslim's Triton GEMV, opt-in)."""

    group_size: int = 128
    bits: ClassVar[int] = 4
    shape_rule: ClassVar[str] = "in_features % group_size == 0 and out_features % 8 == 0 (tinygemm)"
    recipe_name: ClassVar[str] = "int4wo"
    module_kind: ClassVar[str] = INT4_KIND
    quant_method: ClassVar[str] = INT4_QUANT_METHOD

    def __post_init__(self):
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"group_size (--group-size) must be one of {GROUP_SIZES}, got {self.group_size!r}")

    def params(self) -> dict:
        return {"name": self.name, "bits": 4, "group_size": self.group_size, "backend": "aten-tinygemm/vlmslim-triton"}

    def resolved(self, model_dtype: torch.dtype):
        if model_dtype == torch.float16:  # a hint, not an error: fp16 models run, a little slower
            logger.info("int4wo computes in bf16: this fp16 model casts its activations around every int4 product "
                        "(measured 3.00 vs 2.94 ms/token on the 7B shape); `vlmslim bench --dtype bfloat16` "
                        "avoids them")
        return self

    def shape_error(self, out_features: int, in_features: int) -> str | None:
        return f"{out_features}x{in_features}" if in_features % self.group_size or out_features % 8 else None

    def quantize_linear(self, linear: nn.Linear, device) -> nn.Module:
        return Int4WeightOnlyLinear.from_linear(linear.to(device), self.group_size)

    def quantization_config(self, skip_modules) -> dict:
        return {"quant_method": INT4_QUANT_METHOD, "group_size": self.group_size,
                "modules_to_not_convert": list(skip_modules)}

    def linear_bytes(self, out_features: int, in_features: int, weight_dtype: torch.dtype) -> dict[str, int]:
        groups = in_features // self.group_size
        return {"weight": out_features * in_features // 2, "scales": 2 * 2 * out_features * groups, "metadata": 0}


@dataclass(frozen=True)
class Fp8WeightOnlyRecipe(_OwnModuleRecipe):
    """Fp8 e4m3 weight-only (`vlmslim.fp8`), bf16 activations, decode on vlmslim's Triton GEMV. Needs an
    Ada / Hopper or newer GPU."""

    recipe_name: ClassVar[str] = "fp8"
    backend: ClassVar[str] = "vlmslim-triton"
    module_kind: ClassVar[str] = fp8.KIND
    quant_method: ClassVar[str] = fp8.QUANT_METHOD
    module: ClassVar[type] = fp8.Fp8WeightOnlyLinear

    def device_error(self, device: torch.device) -> str | None:
        return fp8.device_error(device)


@dataclass(frozen=True)
class Int8WeightOnlyRecipe(_OwnModuleRecipe):
    """Int8 weight-only (`vlmslim.int8wo`), activations untouched: vlmslim's Triton GEMV on CUDA, ATen's
    int8 weight-only kernel on CPUs."""

    recipe_name: ClassVar[str] = "int8wo"
    backend: ClassVar[str] = "vlmslim-triton/aten-cpu"
    module_kind: ClassVar[str] = int8wo.KIND
    quant_method: ClassVar[str] = int8wo.QUANT_METHOD
    module: ClassVar[type] = int8wo.Int8WeightOnlyLinear


@dataclass(frozen=True)
class Int8DynamicRecipe(_OwnModuleRecipe):
    """Int8 weights with int8 activations quantized per call (`vlmslim.int8dq`): PyTorch's x86 dynamic
    kernel on the CPU (seed 003's `quantize_dynamic`, saved and reloadable); emulated in bf16 on GPUs
    (right numbers, no speed-up)."""

    recipe_name: ClassVar[str] = "int8dq"
    backend: ClassVar[str] = "torch-x86-dynamic"
    module_kind: ClassVar[str] = int8dq.KIND
    quant_method: ClassVar[str] = int8dq.QUANT_METHOD
    module: ClassVar[type] = int8dq.Int8DynamicLinear


Recipe = Union[Int8Recipe, FourBitRecipe, Int4WeightOnlyRecipe, Fp8WeightOnlyRecipe, Int8WeightOnlyRecipe,
               Int8DynamicRecipe]

RECIPES = {
    "int8": Int8Recipe,
    "nf4": lambda **kw: FourBitRecipe(quant_type="nf4", **kw),
    "fp4": lambda **kw: FourBitRecipe(quant_type="fp4", **kw),
    "int4wo": Int4WeightOnlyRecipe,
    "fp8": Fp8WeightOnlyRecipe,
    "int8wo": Int8WeightOnlyRecipe,
    "int8dq": Int8DynamicRecipe,
}
RECIPE_CLASSES = {"int8": Int8Recipe, "nf4": FourBitRecipe, "fp4": FourBitRecipe, "int4wo": Int4WeightOnlyRecipe,
                 "fp8": Fp8WeightOnlyRecipe, "int8wo": Int8WeightOnlyRecipe, "int8dq": Int8DynamicRecipe}


def make_recipe(name: str, **options) -> Recipe:
    """A recipe by registry name; an option the recipe does not take is an error, never silently dropped
    (seed 004 put 4-bit keys into its 8-bit config)."""
    if name not in RECIPES:
        raise ValueError(f"unknown quantization recipe {name!r}; choose from {', '.join(sorted(RECIPES))}")
    allowed = {f.name for f in fields(RECIPE_CLASSES[name])} - {"quant_type"}
    for key in options:
        if key not in allowed:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{key} ({flag}) does not apply to the {name} recipe (it takes: "
                             f"{', '.join(sorted(allowed)) or 'no options'})")
    return RECIPES[name](**options)


def recipe_from_bits(bits: int, quant_type: str | None = None, double_quant: bool = False,
                     compute_dtype: str | None = None, int8_threshold: float | None = None) -> Recipe:
    """Map the CLI's `--bits 8|4 [--quant-type]` onto a recipe; None / False mean "not given"."""
    if bits not in (8, 4):
        raise ValueError(f"bits (--bits) must be 8 or 4, got {bits!r}")
    if bits == 8:
        for given, flag in ((quant_type is not None, "--quant-type"), (double_quant, "--double-quant"),
                            (compute_dtype is not None, "--compute-dtype")):
            if given:
                raise ValueError(f"{flag} applies to 4-bit only; --bits 8 is LLM.int8 (see --int8-threshold)")
        return make_recipe("int8", **({} if int8_threshold is None else {"int8_threshold": int8_threshold}))
    if int8_threshold is not None:
        raise ValueError("--int8-threshold applies to --bits 8 only")
    if quant_type is None:
        # bitsandbytes itself defaults to fp4, which seed 004 got by accident; nf4 is the QLoRA choice.
        logger.info("--bits 4 without --quant-type: using nf4 (bitsandbytes' own default would be fp4)")
        quant_type = "nf4"
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type (--quant-type) must be 'nf4' or 'fp4', got {quant_type!r}")
    return make_recipe(quant_type, double_quant=double_quant, compute_dtype=compute_dtype)


def recipe_from_params(params: dict) -> Recipe:
    """Inverse of `recipe.params()` (reads a manifest's record)."""
    p = {k: v for k, v in params.items() if k not in ("name", "bits", "blocksize", "quant_type", "backend")}
    return make_recipe(params["name"], **p)


def describe(recipe: Recipe) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(recipe).items())
