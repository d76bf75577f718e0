"""Where a model's modules go when it is larger than one device: `--device-map` and `--max-memory`.

Checkpoints pass both straight to `from_pretrained` (transformers resolves "auto" / "balanced" /
"sequential" with accelerate). Random-weight models have no files to stream, so the map is computed here
with accelerate on the empty skeleton, each tensor is drawn on one generator device and moved to its slot,
and `accelerate.dispatch_model` adds the hooks that run CPU-held layers on the GPU (as from_pretrained's
offload does).
"""

from __future__ import annotations

import re

import torch
from accelerate import dispatch_model, infer_auto_device_map
from accelerate.utils import convert_file_size_to_int, get_balanced_memory
from torch import nn

DEVICE_MAPS = ("auto", "balanced", "sequential")  # transformers' and accelerate's string strategies
_KEY = re.compile(r"^(\d+|cpu|disk)$")


def parse_max_memory(text: str | None) -> dict | None:
    """'0=20GiB,cpu=60GiB' -> {0: '20GiB', 'cpu': '60GiB'} (accelerate's format); ValueError naming the
    option for anything else."""
    if text is None:
        return None
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, size = part.partition("=")
        key, size = key.strip(), size.strip()
        if not sep or not _KEY.match(key):
            raise ValueError(f"--max-memory: {part!r} is not DEVICE=SIZE with DEVICE a GPU index, cpu or disk "
                             "(e.g. 0=20GiB,cpu=60GiB)")
        try:
            convert_file_size_to_int(size)
        except ValueError as e:
            raise ValueError(f"--max-memory: {size!r} is not a size such as 20GiB or 500MB") from e
        out[int(key) if key.isdigit() else key] = size
    if not out:
        raise ValueError("--max-memory is empty; give e.g. 0=20GiB,cpu=60GiB")
    return out


def check_device_map(device_map: str | None, max_memory: str | None) -> None:
    """ValueError (naming the option) for an unknown strategy or --max-memory without a map."""
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise ValueError(f"--device-map must be one of {', '.join(DEVICE_MAPS)}, got {device_map!r}")
    if max_memory is not None and device_map is None:
        raise ValueError("--max-memory limits a --device-map; pass --device-map auto|balanced|sequential too")
    parse_max_memory(max_memory)


def model_devices(model: nn.Module) -> list[str]:
    """Every device the model's modules are placed on (a device map's slots, else where the parameters
    are), e.g. ['cuda:0', 'cpu']."""
    mapped = getattr(model, "hf_device_map", None)
    if mapped:
        found = {f"cuda:{v}" if isinstance(v, int) else str(v) for v in mapped.values()}
    else:
        found = {str(p.device) for p in model.parameters()}
    return sorted(found)


def spans_devices(model: nn.Module) -> bool:
    return len(model_devices(model)) > 1


def placement_summary(model: nn.Module) -> dict[str, float]:
    """{device: MB of parameters placed there}, e.g. {'cuda:0': 7900.1, 'cpu': 6010.5} (config and summary).
    Offloaded weights count where their map slot is (accelerate parks them on 'meta' between uses)."""
    mapped = getattr(model, "hf_device_map", None)
    mb: dict[str, float] = {}
    for name, p in model.named_parameters():
        slot = slot_of(name, mapped) if mapped else p.device
        key = f"cuda:{slot}" if isinstance(slot, int) else str(slot)
        mb[key] = mb.get(key, 0.0) + p.numel() * p.element_size() / 1e6
    return {k: round(v, 1) for k, v in sorted(mb.items())}


def infer_device_map(model: nn.Module, strategy: str, max_memory: dict | None, dtype: torch.dtype) -> dict:
    """{module name: device} for an empty (meta) model, as from_pretrained resolves `strategy`: "sequential"
    fills device 0 first; "auto"/"balanced" spread the layers evenly over the GPUs (then CPU)."""
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if strategy != "sequential":
        max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype,
                                         low_zero=False)
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    if "disk" in device_map.values():
        raise ValueError("--max-memory leaves no room for some layers on the GPUs or the CPU (they would go to "
                         "disk, which random-weight models do not support): raise the cpu limit")
    return device_map


def slot_of(name: str, device_map: dict) -> str | int:
    """The device of parameter `name` under `device_map` (its longest module prefix)."""
    parts = name.split(".")
    for k in range(len(parts), -1, -1):
        prefix = ".".join(parts[:k])
        if prefix in device_map:
            return device_map[prefix]
    raise KeyError(f"{name} is in no module of the device map")


def dispatch(model: nn.Module, device_map: dict) -> nn.Module:
    """Hooks that move inputs (and CPU-held weights) to each module's execution device; sets hf_device_map."""
    model = dispatch_model(model, device_map=device_map)
    model.hf_device_map = device_map
    return model
