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
from vlmslim.io import holds_output
from vlmslim.loading import (empty_model, is_random, load_config, load_model, parse_dtype, resolve_device,
                             resolve_source)
from vlmslim.manifest import new_manifest, read_manifest
from vlmslim.pruning.calibrate import calibration_count, load_calibration
from vlmslim.pruning.config import PruneConfig
from vlmslim.pruning.prune import check_request, plan_pruning, prune, record_step
from vlmslim.pruning.streaming import prune_streaming, streaming_refusal

logger = logging.getLogger(__name__)


def _preflight(src: str, config: PruneConfig):
    """Refuse impossible requests from the config alone (no weights loaded)."""
    if config.is_noop:  # a copy labelled "prune none" is never what was meant
        raise PruningError("nothing to prune: pass --glu R, --heads R, --drop-layers N|I,J or --trim-vision")
    model_config = load_config(src)
    manifest = read_manifest(src) if Path(src).is_dir() else None
    quantized = getattr(model_config, "quantization_config", None) is not None or (
        manifest and any(s.get("kind") == "quantize" for s in manifest.get("steps", [])))
    if quantized:
        raise PruningError(f"{src} is a quantized checkpoint; prune the 16-bit checkpoint, then quantize it")
    arch = manifest["architecture"] if manifest and not manifest.get("stock_loadable", True) else None
    skeleton = empty_model(model_config, arch)
    check_request(skeleton, config)
    if config.needs_calibration and config.calibration is None:
        raise PruningError(config.missing_calibration_message())
    return skeleton


@holds_output
def prune_checkpoint(src: str | os.PathLike, out: str | os.PathLike, config: PruneConfig, device: str = "cpu",
                     overwrite: bool = False, streaming: bool = False) -> tuple[Path, dict]:
    """Load `src`, prune, save to `out` (atomic), verify the reload; returns (out, manifest).
    `device` "auto": cuda if available, else cpu. `streaming`: one decoder layer at a time from the safetensors
    shards on the CPU (weight criteria only; `vlmslim.pruning.streaming`), same output."""
    device = resolve_device(device)
    if streaming and streaming_refusal(config):  # before the preflight's "pass --calibration DIR"
        raise PruningError(streaming_refusal(config))
    src = resolve_source(src)
    _preflight(src, config)
    if streaming:
        return prune_streaming(src, out, config, overwrite=overwrite)
    calibration = load_calibration(config.calibration) if config.needs_calibration else None
    if calibration is not None:
        calibration_count(config.calibration_samples, calibration)  # refuse before loading the model
    model, processor = load_model(src, device=device)  # the checkpoint's own dtype
    model, step = prune(model, processor, config, calibration)
    manifest = record_step(new_manifest(src, model.config, prior=read_manifest(src), seed=config.seed), model, step)
    dtype = next(model.parameters()).dtype
    atol = 1e-5 if dtype == torch.float32 else 1e-2  # same weights, same kernels: any bug shows as O(1)
    manifest = save_verified(model, processor, out, manifest, atol=atol, device=device,
                             overwrite=overwrite)
    logger.info("pruned %s -> %s (stock loadable: %s)", src, out, step["stock_loadable"])
    return Path(out), manifest


def plan_checkpoint(src: str | os.PathLike, config: PruneConfig, device: str = "cpu") -> dict:
    """`vlmslim prune --plan-only`: the per-layer plan and parameter / byte budget of pruning `src`; writes
    nothing. Weights are loaded only when the plan needs data (calibration criteria or allocation)."""
    src = resolve_source(src)
    skeleton = _preflight(src, config)
    # the dtype load_model would give: the saved one ("auto"), random weights in float16
    dtype = parse_dtype(getattr(skeleton.config, "dtype", None)) or (torch.float16 if is_random(src) else torch.float32)
    if not config.needs_calibration:
        return plan_pruning(skeleton, None, config, dtype=dtype)
    model, processor = load_model(src, device=device)
    return plan_pruning(model, processor, config, load_calibration(config.calibration))
