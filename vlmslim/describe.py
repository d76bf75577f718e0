"""`vlmslim inspect`: what a checkpoint is, without reading its weights.

Manifest + census + shapes. Shapes come from the manifest's per-layer architecture when there is one
(the config may keep unpruned head counts that the stock config class insists on), else from the config;
the census of an unmanifested model comes from an empty (meta) skeleton. Weights files are checked by
their headers, so a truncated checkpoint is an error here too.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlmslim.census import census
from vlmslim.families import get_family
from vlmslim.io import dir_size
from vlmslim.loading import check_weight_files, empty_model, is_random, load_config, model_class, resolve_source
from vlmslim.manifest import read_manifest

_SHAPE_KEYS = ("hidden_size", "intermediate_size", "ffn_dim", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size")


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


def describe(src: str | os.PathLike) -> dict:
    """Manifest + census + key shapes, without reading weights."""
    src = resolve_source(src)
    config = load_config(src)
    cls = model_class(config)
    local = not is_random(src) and Path(src).is_dir()
    manifest = read_manifest(src) if local else None
    if local:
        check_weight_files(src)
    info_census = manifest["census"] if manifest is not None and "census" in manifest else census(empty_model(config))
    return {
        "source": src,
        "model_type": config.model_type,
        "architecture": cls.__name__,
        "quantization_config": getattr(config, "quantization_config", None),
        "shapes": _shapes(config, manifest),
        "census": info_census,
        "bytes_on_disk": dir_size(src) if local else None,
        "manifest": manifest,
    }
