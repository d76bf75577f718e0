"""What a model is made of, per component: parameters, bytes, and the precision of every Linear layer.

The census is the proof behind every claim about a checkpoint ("the vision tower stays 16-bit"):
quantization checks it against its target, manifests and model cards record it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlmslim.families import COMPONENTS, get_family

QUANT_KINDS = ("int8", "nf4", "fp4", "4bit", "int4wo", "fp8wo", "int8wo", "int8dq")  # quantized `linear_kind`s ("4bit": bnb, type unknown)
_FLOAT_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def linear_kind(module: nn.Module) -> str | None:
    """'fp16' / 'bf16' / 'fp32' / 'int8' / 'nf4' / 'fp4' for Linear layers, None for anything else."""
    cls = type(module).__name__
    if cls == "Linear4bit":
        state = getattr(module.weight, "quant_state", None)
        return getattr(state, "quant_type", None) or getattr(module.weight, "quant_type", "4bit")
    if cls == "Linear8bitLt":
        return "int8"
    if cls == "Int4WeightOnlyLinear":
        return "int4wo"  # vlmslim.int4: weights are buffers (codes, scales, zeros), not parameters
    if cls == "Int8WeightOnlyLinear":
        return "int8wo"  # vlmslim.int8wo: weights are buffers (codes, scales)
    if cls == "Fp8WeightOnlyLinear":
        return "fp8wo"  # vlmslim.fp8: weights are buffers (codes, scales)
    if cls == "Int8DynamicLinear":
        return "int8dq"  # vlmslim.int8dq: weights are buffers
    if isinstance(module, nn.Linear):
        return _FLOAT_NAMES.get(module.weight.dtype, str(module.weight.dtype).removeprefix("torch."))
    return None


def logical_numel(param: torch.Tensor) -> int:
    """Parameter count before packing: bnb stores two 4-bit values per uint8 element."""
    state = getattr(param, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return math.prod(state.shape)
    return param.numel()


def _storage_bytes(param: torch.Tensor) -> int:
    n = param.numel() * param.element_size()
    state = getattr(param, "quant_state", None)  # 4-bit: absmax (+ nested absmax/code with double quant)
    if state is not None:
        for t in (getattr(state, "absmax", None), getattr(state, "code", None)):
            if isinstance(t, torch.Tensor):
                n += t.numel() * t.element_size()
        nested = getattr(state, "state2", None)
        if nested is not None:
            n += sum(t.numel() * t.element_size() for t in (nested.absmax, nested.code) if isinstance(t, torch.Tensor))
    scb = getattr(param, "SCB", None)  # int8: one fp32 scale per output row
    if isinstance(scb, torch.Tensor):
        n += scb.numel() * scb.element_size()
    return n


def census(model: nn.Module) -> dict:
    """{"components": {comp: {"params", "bytes", "linear": {kind: count}}}, "total_params", "total_bytes",
    "tied": [...]} — parameters shared by two names (tied embeddings) are counted once, under the first."""
    family = get_family(model)
    comps = {c: {"params": 0, "bytes": 0, "linear": {}} for c in (*COMPONENTS, "other")}
    for name, param in model.named_parameters():  # named_parameters() yields a shared tensor once
        c = comps[family.component_of(name)]
        c["params"] += logical_numel(param)
        c["bytes"] += _storage_bytes(param)
    for name, buf in model.named_buffers():
        if name.rsplit(".", 1)[-1] in ("inv_freq", "original_inv_freq"):
            continue  # rotary tables are recomputed, never stored
        comps[family.component_of(name)]["bytes"] += buf.numel() * buf.element_size()
    for name, module in model.named_modules():
        kind = linear_kind(module)
        if kind is not None:
            lin = comps[family.component_of(name)]["linear"]
            lin[kind] = lin.get(kind, 0) + 1
        if kind in ("int4wo", "fp8wo", "int8wo", "int8dq"):  # the (out, in) weight lives in buffers: count the parameters it stands for
            comps[family.component_of(name)]["params"] += module.out_features * module.in_features
    tied = [list(pair) for pair in tied_parameters(model)]
    if comps["other"]["params"] == 0 and not comps["other"]["linear"]:
        del comps["other"]
    return {
        "components": comps,
        "total_params": sum(c["params"] for c in comps.values()),
        "total_bytes": sum(c["bytes"] for c in comps.values()),
        "tied": tied,
    }


def tied_parameters(model: nn.Module) -> list[tuple[str, str]]:
    """(first name, other name) for every parameter reachable under two names (tied embeddings)."""
    seen: dict[int, str] = {}
    pairs = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            pairs.append((seen[id(param)], name))
        seen.setdefault(id(param), name)
    return pairs


def quantized_kinds(model: nn.Module) -> list[str]:
    """The bitsandbytes kinds among the model's Linear layers (empty for a float model)."""
    return sorted({k for k in linear_layers(model).values() if k in QUANT_KINDS})


def linear_layers(model: nn.Module) -> dict[str, str]:
    """{module name: kind} for every Linear layer (quantization checks its target against this)."""
    return {name: kind for name, m in model.named_modules() if (kind := linear_kind(m)) is not None}
