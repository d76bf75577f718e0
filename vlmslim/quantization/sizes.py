"""Bytes on disk: the analytic expectation of a quantized checkpoint, and what safetensors actually holds.

`expected_bytes` is pure arithmetic over tensor shapes (it works on a model built on the meta device,
so a 7B expectation costs no memory); `safetensors_bytes` reads the files' headers. Their tensor payloads
must agree to the byte, except the JSON blob of a double-quant layer, whose float offset has a
data-dependent length (±3 bytes per layer).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch
from torch import nn


def param_inventory(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{state-dict name: (shape, dtype)} of what `save_pretrained` writes: parameters (a tied tensor once)
    and persistent buffers. Works on meta models."""
    out, seen = {}, set()
    # Tied weights are saved once. On a meta model the tensors are not shared yet, so the declared ties
    # (transformers 5: {tied name: source name}) decide too.
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen or name in tied:
            continue
        seen.add(id(t))
        out[name] = (tuple(t.shape), t.dtype)
    return out


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def expected_bytes(model_or_inventory, recipe, target) -> dict[str, int]:
    """Analytic tensor bytes of the checkpoint after applying `recipe` to `target`.

    `model_or_inventory`: the *unquantized* model (meta is fine) or its `param_inventory`; `recipe`: a
    recipe or None (no quantization); `target`: a resolved `Target` or an iterable of Linear names.
    Returns {"float", "quantized_weights", "quant_scales", "quant_metadata", "total", "quantized_layers"}.
    """
    inv = model_or_inventory if isinstance(model_or_inventory, dict) else param_inventory(model_or_inventory)
    names = getattr(target, "quantize", target) if recipe is not None else ()
    quantized = {f"{n}.weight" for n in names}
    missing = sorted(quantized - inv.keys())
    if missing:
        raise ValueError(f"target layers have no weight in the inventory: {missing[:3]}")
    out = {"float": 0, "quantized_weights": 0, "quant_scales": 0, "quant_metadata": 0}
    for key, (shape, dtype) in inv.items():
        if key in quantized:
            b = recipe.linear_bytes(shape[0], shape[1], dtype)
            out["quantized_weights"] += b["weight"]
            out["quant_scales"] += b["scales"]
            out["quant_metadata"] += b["metadata"]
        else:
            out["float"] += math.prod(shape) * _itemsize(dtype)
    out["total"] = sum(out.values())
    out["quantized_layers"] = len(quantized)
    return out


def safetensors_bytes(path: str | os.PathLike) -> dict[str, int]:
    """{"payload": tensor bytes, "headers": JSON headers + length prefixes, "files": total file bytes,
    "tensors": count} over every *.safetensors file in a checkpoint dir."""
    out = {"payload": 0, "headers": 0, "files": 0, "tensors": 0}
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))  # little-endian u64 header length, then JSON
            header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        out["payload"] += sum(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values())
        out["headers"] += 8 + n
        out["files"] += f.stat().st_size
        out["tensors"] += len(header)
    return out


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio, 10·log10(Σref² / Σ(ref − test)²), in dB (inf if identical)."""
    ref, test = reference.double(), test.double()
    noise = (ref - test).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)
