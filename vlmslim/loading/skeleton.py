"""Models without their weights: an empty (meta) skeleton of a config, and architecture-only models.

`empty_model` is the one way vlmslim builds a weightless model (shape checks before loading 14 GB, the
census of an unmanifested model, rebuilding pruned or quantized checkpoints). `build_random_model`
materialises a skeleton with random weights directly on the target device (no 28 GB fp32 CPU init for a
7B model): N(0, 0.02) for matrices, ones for norm scales and biases — realistic magnitudes keep
activations finite in fp16. Quality numbers of such a model mean nothing and are never reported.
"""

from __future__ import annotations

import logging

import torch
from accelerate import init_empty_weights
from torch import nn

from vlmslim.loading.placement import dispatch, infer_device_map, placement_summary, slot_of
from vlmslim.loading.sources import load_arch_config, model_class, parse_dtype
from vlmslim.shapes import apply_architecture

logger = logging.getLogger(__name__)


def empty_model(config, architecture: dict | None = None, cls: type | None = None) -> nn.Module:
    """`cls` (default: the config's image-text-to-text class) built with parameters on the meta device and
    real buffers (rotary tables), cut to a manifest `architecture` when given."""
    cls = cls or model_class(config)
    with init_empty_weights():
        model = cls._from_config(config)
        if architecture is not None:
            apply_architecture(model, architecture)
    return model


@torch.no_grad()
def _materialise(model: nn.Module, dtype: torch.dtype, device: torch.device, generator: torch.Generator,
                 device_map: dict | None = None) -> None:
    """Draw every meta parameter on `device` (one generator stream, so a device-mapped build holds the same
    numbers as a one-device build of the same seed), then move it to its slot in `device_map` if given."""
    for prefix, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if not param.is_meta:
                continue
            t = torch.empty(param.shape, dtype=dtype, device=device)
            if t.dim() >= 2:
                t.normal_(0.0, 0.02, generator=generator)
            else:
                t.fill_(1.0)
            if device_map is not None:
                t = t.to(slot_of(f"{prefix}.{name}" if prefix else name, device_map))
            setattr(module, name, nn.Parameter(t, requires_grad=False))


def build_random_model(name_or_path: str, dtype="float16", device: str = "cpu", architecture: dict | None = None,
                       seed: int = 0, device_map: str | None = None, max_memory: dict | None = None) -> nn.Module:
    """A shipped config (or config.json path) with random weights, in eval mode; `architecture` = a pruning
    record to cut to first. `device_map` ("auto" / "balanced" / "sequential", with `max_memory` as
    `vlmslim.loading.placement.parse_max_memory` returns it) spreads it over the GPUs and the CPU; the
    weights are still drawn on `device`, so they equal those of a build without a map."""
    config = load_arch_config(name_or_path)
    torch_dtype = parse_dtype(dtype) or torch.float16
    model = empty_model(config, architecture)
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    if device_map is None:
        _materialise(model, torch_dtype, dev, gen)
        model.tie_weights()
        model.to(dev)  # the real buffers follow
        where = str(dev)
    else:
        slots = infer_device_map(model, device_map, max_memory, torch_dtype)
        _materialise(model, torch_dtype, dev, gen, slots)
        model.tie_weights()
        model = dispatch(model, slots)
        where = f"device_map={device_map} ({placement_summary(model)})"
    logger.info("random-weight %s: %.2fB parameters on %s in %s", config.name_or_path,
                sum(p.numel() for p in model.parameters()) / 1e9, where, torch_dtype)
    return model.eval()
