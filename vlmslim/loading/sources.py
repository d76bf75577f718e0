"""What a model source names, and its config: a hub id, a local HF dir, a vlmslim checkpoint, "demo" (the
embedded model) or "random:<config>" (a shipped config in `vlmslim/configs/models/`, random weights).

torch and transformers are imported by the functions that need them: resolving a source is plain path
logic, and `vlmslim inspect` of a vlmslim checkpoint never imports them (seconds of start-up).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vlmslim.errors import ModelLoadError
from vlmslim.families import get_family

PACKAGE_DIR = Path(__file__).resolve().parents[1]
DEMO_DIR = PACKAGE_DIR / "demo" / "model"
CONFIG_DIR = PACKAGE_DIR / "configs" / "models"  # shipped in the wheel (setup.cfg package_data)
RANDOM_PREFIX = "random:"  # "random:llava-1.5-7b": configs/models/llava-1.5-7b.json with random weights
_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
           "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # name -> torch attribute

if TYPE_CHECKING:
    import torch


def parse_dtype(dtype) -> torch.dtype | None:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return None if dtype == "auto" else dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or 'auto', got {dtype!r}")
    return getattr(torch, _DTYPES[dtype])


def resolve_device(device: str | None) -> str:
    """`--device auto` (or None) for the steps that run on one device (prune, quantize, sweep): cuda when a
    CUDA device is available, else cpu. Anything else is returned as given. (`vlmslim bench --device auto`
    means device_map="auto" instead: one model spread over every GPU.)"""
    if device is None or device == "auto":
        import torch  # torch-free module import (inspect); only this answer needs it

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _looks_like_path(src: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a slash is meant as a path.
    return src.startswith((".", "/", "~")) or src.rstrip("/").count("/") >= 2


def resolve_source(src: str | os.PathLike) -> str:
    """A local model directory or a hub id (checked for reachability by the loader); 'demo' = shipped model."""
    src = str(src)
    if src.startswith(RANDOM_PREFIX):  # architecture-only: a shipped config with random weights
        return src
    if src == "demo":
        if not (DEMO_DIR / "config.json").exists():
            raise ModelLoadError(f"the embedded demo model is missing from the installed package ({DEMO_DIR})")
        return str(DEMO_DIR)
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{src} is a file, not a model directory")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{src} is not a model directory (no config.json)")
        return str(path)
    if _looks_like_path(src):
        raise ModelLoadError(f"model path {src} does not exist")
    return src  # a hub id


def is_random(src: str) -> bool:
    return str(src).startswith(RANDOM_PREFIX)


# ---------------------------------------------------------------- configs


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
    try:
        d = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from e
    from transformers import AutoConfig

    d = {k: v for k, v in d.items() if not k.startswith("_comment")}
    model_type = d.pop("model_type", None)
    if model_type is None:
        raise ModelLoadError(f"{path} has no model_type")
    config = AutoConfig.for_model(model_type, **d)
    config.name_or_path = f"{RANDOM_PREFIX}{path.stem}"
    return config


def load_config(src: str):
    from transformers import AutoConfig

    if is_random(src):
        return load_arch_config(src.removeprefix(RANDOM_PREFIX))
    try:
        return AutoConfig.from_pretrained(src)
    except OSError as e:
        if Path(src).exists():
            raise ModelLoadError(f"cannot read the config in {src}: {e}") from e
        raise ModelLoadError(
            f"cannot load {src!r}: not a local directory, and the hub is unreachable "
            "(offline or HF_HUB_OFFLINE=1); download it first or pass a local directory"
        ) from e
    except ValueError as e:  # unknown model_type in config.json, invalid JSON
        raise ModelLoadError(f"{src} has a config transformers cannot read: {str(e).splitlines()[0]}") from e


def model_class(config):
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(config.model_type)
    get_family(config)  # unsupported families fail here with the list of supported ones
    if name is None:
        raise ModelLoadError(f"model type {config.model_type!r} is not an image-text-to-text model")
    return getattr(transformers, name)
