"""`load_model`: any source -> (model in eval mode, processor or None).

One dispatch for every kind of source: random weights for "random:<config>", a saved bitsandbytes
checkpoint (stock `from_pretrained`, or rebuilt from the manifest for pruned shapes), or float weights
(stock `from_pretrained`, or through a class that cuts the superset config to the manifest's shapes).
Weights files are checked before transformers sees them (`vlmslim.loading.files`), so a truncated or
pickle-only checkpoint is one clear error, not a traceback from deep inside a loader.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import AutoProcessor

from vlmslim.errors import ModelLoadError
from vlmslim.loading.files import check_weight_files
from vlmslim.loading.quantized import load_saved_quantized
from vlmslim.loading.skeleton import build_random_model
from vlmslim.loading.sources import (RANDOM_PREFIX, is_random, load_config, model_class, parse_dtype, resolve_device,
                                     resolve_source)
from vlmslim.manifest import read_manifest
from vlmslim.shapes import rebuilt_class

logger = logging.getLogger(__name__)

__all__ = ["check_weight_files", "load_model", "load_processor", "load_weights"]

def load_model(src: str | os.PathLike, dtype=None, device: str = "cpu", device_map: str | None = None,
               max_memory: dict | None = None):
    """(model in eval mode, processor or None) from a hub id, an HF dir, a vlmslim checkpoint, 'demo', or
    'random:<shipped config>' (random weights, no processor: for speed/memory work).

    `dtype` None keeps the saved dtype. Quantize at load: `vlmslim.quantization.load_quantized`.
    `device_map` ("auto" / "balanced" / "sequential") and `max_memory` ({0: "20GiB", "cpu": "60GiB"}) spread a
    model larger than one device over the GPUs and the CPU; `device` is then ignored.
    """
    src = resolve_source(src)
    torch_dtype = parse_dtype(dtype)
    if device == "auto" and device_map is None:  # `bench --device auto`: the older spelling of --device-map auto
        device_map = "auto"
    placement = {"device_map": device_map, "max_memory": max_memory}
    if is_random(src):
        model = build_random_model(src.removeprefix(RANDOM_PREFIX), dtype=torch_dtype or "float16",
                                   device=resolve_device(device), **placement)
        return model, None  # no tokenizer/processor: synthetic inputs only
    config = load_config(src)
    cls = model_class(config)
    manifest = read_manifest(src) if Path(src).is_dir() else None
    if Path(src).is_dir():
        check_weight_files(src)
    if getattr(config, "quantization_config", None) is not None:  # a saved bnb checkpoint
        model = load_saved_quantized(src, cls, config, manifest, dtype=torch_dtype, device=device, **placement)
    else:
        model = load_weights(src, cls, config, manifest, torch_dtype, device, **placement)
    model.eval()
    return model, load_processor(src)


def load_weights(src: str, cls, config, manifest: dict | None, dtype, device: str, device_map: str | None = None,
                 max_memory: dict | None = None):
    """The unquantized model: stock `from_pretrained`, or rebuilt from the manifest for pruned shapes."""
    if manifest and not manifest.get("stock_loadable", True):
        # Stock from_pretrained through a class whose constructor cuts the config's (superset) shapes down to
        # the manifest's architecture, so key conversion, dtype and device placement stay transformers'.
        model = _load_stock(src, rebuilt_class(cls, manifest["architecture"]), dtype, device, device_map, max_memory)
        model.__class__ = cls  # the subclass only adds a constructor; later steps see the stock class
        return model
    return _load_stock(src, cls, dtype, device, device_map, max_memory)


def _load_stock(src: str, cls, dtype, device: str, device_map: str | None = None, max_memory: dict | None = None):
    kwargs = {"dtype": dtype or "auto"}
    if device_map is not None:  # spread over GPUs/CPU for models bigger than one device
        kwargs.update(device_map=device_map, max_memory=max_memory)
    try:
        model = cls.from_pretrained(src, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"cannot load weights from {src}: {str(e).splitlines()[0]}") from e
    except RuntimeError as e:  # transformers 5 raises this after logging the mismatched tensors' report
        if "ignore_mismatched_sizes" not in str(e):
            raise
        raise ModelLoadError(f"the tensors in {src} do not match the shapes its config.json and vlmslim.json "
                             "describe (see the load report above); restore the files or re-save the checkpoint"
                             ) from e
    except ValueError as e:  # e.g. a --max-memory that sends layers to disk without an offload folder
        if device_map is None:
            raise
        raise ModelLoadError(f"--device-map {device_map} --max-memory {max_memory}: {str(e).splitlines()[0]}") from e
    return model if device_map is not None else model.to(device)


def load_processor(src: str):
    try:
        return AutoProcessor.from_pretrained(src)
    except (OSError, ValueError, ImportError, TypeError, KeyError) as e:
        # Qwen2.5-VL's processor needs torchvision; model-only dirs have no processor files.
        logger.warning("no processor loaded from %s (%s: %s)", src, type(e).__name__, str(e).splitlines()[0][:200])
        return None
