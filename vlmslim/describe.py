"""`vlmslim inspect`: what a checkpoint is, without reading its weights.

Manifest + census + shapes. Shapes come from the manifest's per-layer architecture when there is one
(the config may keep unpruned head counts that the stock config class insists on), else from the config.
Weights files are checked by their headers, so a truncated checkpoint is an error here too.

A vlmslim checkpoint (manifest with a census) is described from plain JSON: its config.json as saved,
the manifest, the weights headers. No torch or transformers import (seconds of start-up for a
sub-second answer). Any other model needs transformers' config and an empty (meta) skeleton for its
census; those are imported only then.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlmslim.errors import ModelLoadError
from vlmslim.families import get_family
from vlmslim.io import dir_size
from vlmslim.loading.files import check_weight_files
from vlmslim.loading.sources import is_random, resolve_source
from vlmslim.manifest import read_manifest

_SHAPE_KEYS = ("hidden_size", "intermediate_size", "ffn_dim", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size")


class SavedConfig:
    """config.json as attributes (`cfg.text_config.hidden_size`), for the families' accessors; a key the
    file does not hold is an AttributeError, so `getattr(cfg, key, None)` reads it like a config object."""

    def __init__(self, data: dict):
        self._data = data

    def __getattr__(self, key: str):
        try:
            value = self._data[key]
        except KeyError:
            raise AttributeError(key) from None
        return SavedConfig(value) if isinstance(value, dict) else value


def saved_config(src: str) -> SavedConfig:
    path = Path(src) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelLoadError(f"{path} has no model_type")
    return SavedConfig(data)


def _shapes(config, manifest: dict | None) -> dict:
    family = get_family(config)
    text = family.get_text_config(config)
    vision = config.vision_config
    shapes = {
        "language": {k: getattr(text, k) for k in _SHAPE_KEYS if getattr(text, k, None) is not None},
        "vision": {k: getattr(vision, k) for k in (*_SHAPE_KEYS, "depth", "num_heads", "image_size", "patch_size")
                   if getattr(vision, k, None) is not None},
    }
    arch = (manifest or {}).get("architecture")
    if arch:  # the real shapes: per decoder layer, as the modules hold them
        layers = arch["text_layers"]
        shapes["language_layers"] = layers
        for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
            values = sorted({layer[key] for layer in layers if key in layer})
            if values:
                shapes["language"][key] = values[0] if len(values) == 1 else f"{values[0]}..{values[-1]} (per layer)"
        shapes["language"]["num_hidden_layers"] = len(layers)
    return shapes


def _from_transformers(src: str) -> tuple[object, str, dict]:
    """(config, class name, census) of a model without a vlmslim census: transformers + a meta skeleton."""
    from vlmslim.census import census
    from vlmslim.loading.skeleton import empty_model
    from vlmslim.loading.sources import load_config, model_class

    config = load_config(src)
    model = empty_model(config)
    # built under init_empty_weights, a tied head (BLIP, PaliGemma) is not tied yet: it would count twice
    model.tie_weights()
    return config, model_class(config).__name__, census(model)


def describe(src: str | os.PathLike) -> dict:
    """Manifest + census + key shapes, without reading weights."""
    src = resolve_source(src)
    local = not is_random(src) and Path(src).is_dir()
    manifest = read_manifest(src) if local else None
    if local:
        check_weight_files(src)
    if manifest is not None and "census" in manifest:
        config = saved_config(src)
        get_family(config)  # an unsupported family fails here, as on the transformers path
        architecture = (getattr(config, "architectures", None) or ["?"])[0]
        info_census = manifest["census"]
    else:
        config, architecture, info_census = _from_transformers(src)
    quantization = getattr(config, "quantization_config", None)
    return {
        "source": src,
        "model_type": config.model_type,
        "architecture": architecture,
        "quantization_config": quantization._data if isinstance(quantization, SavedConfig) else quantization,
        "shapes": _shapes(config, manifest),
        "census": info_census,
        "bytes_on_disk": dir_size(src) if local else None,
        "manifest": manifest,
    }
