"""Architecture-only models: a shipped config (e.g. LLaVA-1.5-7B's shape) with random weights.

For speed and memory work only: quality numbers of such a model mean nothing and are never reported.
Weights are allocated directly on the target device (no 28 GB fp32 CPU init for a 7B model): the
skeleton is built on the meta device, then every parameter is materialised with N(0, 0.02) (matrices)
or ones (norm scales, biases) — realistic magnitudes keep activations finite in fp16.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig

from vlmslim.checkpoint import model_class, parse_dtype
from vlmslim.errors import ModelLoadError

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "models"


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json")) if CONFIG_DIR.is_dir() else []


def load_arch_config(name_or_path: str):
    """A transformers config from a shipped name (`llava-1.5-7b`) or a JSON file path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ModelLoadError(f"no model config {name_or_path!r}; shipped: {', '.join(available_configs()) or 'none'}"
                             " (or pass a config.json path)")
    d = json.loads(path.read_text())
    d = {k: v for k, v in d.items() if not k.startswith("_comment")}
    model_type = d.pop("model_type", None)
    if model_type is None:
        raise ModelLoadError(f"{path} has no model_type")
    config = AutoConfig.for_model(model_type, **d)
    config.name_or_path = f"random:{path.stem}"
    return config


@torch.no_grad()
def _materialise(model: nn.Module, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> None:
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if not param.is_meta:
                continue
            t = torch.empty(param.shape, dtype=dtype, device=device)
            if t.dim() >= 2:
                t.normal_(0.0, 0.02, generator=generator)
            else:
                t.fill_(1.0)
            setattr(module, name, nn.Parameter(t, requires_grad=False))


def build_random_model(name_or_path: str, dtype="float16", device: str = "cpu", architecture: dict | None = None,
                       seed: int = 0):
    """(model in eval mode, config name) with random weights; `architecture` = a pruning record to cut to."""
    from accelerate import init_empty_weights

    config = load_arch_config(name_or_path)
    cls = model_class(config)
    torch_dtype = parse_dtype(dtype) or torch.float16
    with init_empty_weights():  # parameters on meta; buffers (rotary tables) real on the CPU
        model = cls._from_config(config)
        if architecture is not None:
            from vlmslim.pruning.surgery import apply_architecture

            apply_architecture(model, architecture)
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    _materialise(model, torch_dtype, dev, gen)
    model.tie_weights()
    model.to(dev)  # the real buffers follow
    logger.info("random-weight %s: %.2fB parameters on %s in %s", config.name_or_path,
                sum(p.numel() for p in model.parameters()) / 1e9, dev, torch_dtype)
    return model.eval()
