"""`vlmslim prune`: checkpoint in, pruned checkpoint out.

Refuse what shapes alone can refuse (on an empty skeleton, before loading weights), load in the
checkpoint's own dtype, prune, then `save_verified`: atomic save with the manifest step, reload and
logits check before the output appears under its final name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from vlmslim.checkpoint import save_verified
from vlmslim.errors import PruningError
from vlmslim.io import check_output_dir
from vlmslim.loading import empty_model, load_config, load_model, resolve_device, resolve_source
from vlmslim.manifest import new_manifest, read_manifest
from vlmslim.pruning.calibrate import load_calibration
from vlmslim.pruning.config import PruneConfig
from vlmslim.pruning.prune import check_request, prune, record_step

logger = logging.getLogger(__name__)


def _preflight(src: str, config: PruneConfig) -> None:
    """Refuse impossible requests from the config alone (no weights loaded)."""
    model_config = load_config(src)
    manifest = read_manifest(src) if Path(src).is_dir() else None
    quantized = getattr(model_config, "quantization_config", None) is not None or (
        manifest and any(s.get("kind") == "quantize" for s in manifest.get("steps", [])))
    if quantized:
        raise PruningError(f"{src} is a quantized checkpoint; prune the 16-bit checkpoint, then quantize it")
    arch = manifest["architecture"] if manifest and not manifest.get("stock_loadable", True) else None
    check_request(empty_model(model_config, arch), config)
    if config.needs_calibration and config.calibration is None:
        raise PruningError(config.missing_calibration_message())


def prune_checkpoint(src: str | os.PathLike, out: str | os.PathLike, config: PruneConfig, device: str = "cpu",
                     overwrite: bool = False) -> tuple[Path, dict]:
    """Load `src`, prune, save to `out` (atomic), verify the reload; returns (out, manifest).
    `device` "auto": cuda if available, else cpu."""
    device = resolve_device(device)
    check_output_dir(out, overwrite)
    src = resolve_source(src)
    _preflight(src, config)
    calibration = load_calibration(config.calibration) if config.needs_calibration else None
    model, processor = load_model(src, device=device)  # the checkpoint's own dtype
    model, step = prune(model, processor, config, calibration)
    manifest = record_step(new_manifest(src, model.config, prior=read_manifest(src), seed=config.seed), model, step)
    dtype = next(model.parameters()).dtype
    atol = 1e-5 if dtype == torch.float32 else 1e-2  # same weights, same kernels: any bug shows as O(1)
    manifest = save_verified(model, processor, out, manifest, atol=atol, device=device,
                             overwrite=overwrite)
    logger.info("pruned %s -> %s (stock loadable: %s)", src, out, step["stock_loadable"])
    return Path(out), manifest
