"""`prune()`: score -> select -> cut over every decoder layer of a model in memory.

    model, step = prune(model, processor, PruneConfig(glu=0.3, heads=0.25))

The checkpoint-to-checkpoint step (`vlmslim prune`) is `vlmslim.pruning.step.prune_checkpoint`.
"""

from __future__ import annotations

import hashlib
import logging
import time

import torch
from torch import nn
from tqdm import tqdm

from vlmslim.census import census, quantized_kinds
from vlmslim.errors import PruningError
from vlmslim.families import Family, get_family
from vlmslim.pruning.calibrate import CalibrationStats, collect_stats, load_calibration
from vlmslim.pruning.config import PruneConfig
from vlmslim.pruning.glu import glu_weights
from vlmslim.pruning.importance import HEAD_IMPORTANCE, NEURON_IMPORTANCE
from vlmslim.pruning.layers import drop_decoder_layers, most_redundant_layers, trim_vision, vision_keep_count
from vlmslim.pruning.select import kept_heads, kept_width, select_heads, select_neurons
from vlmslim.pruning.surgery import sync_config
from vlmslim.shapes import architecture_of, glu_width, head_counts, head_dim, prune_glu, prune_heads

logger = logging.getLogger(__name__)

def indices_sha256(idx: torch.Tensor) -> str:
    """Hash of kept indices (int64 little-endian bytes), recorded instead of thousands of neuron ids."""
    return hashlib.sha256(idx.to(torch.int64).cpu().numpy().astype("<i8").tobytes()).hexdigest()


def param_counts(model: nn.Module) -> dict[str, int]:
    return {comp: c["params"] for comp, c in census(model)["components"].items()}


def check_request(model: nn.Module, config: PruneConfig) -> Family:
    """Everything that can be refused from shapes alone, before any scoring, calibration or surgery.
    Runs on empty (meta) skeletons too, so the CLI refuses before loading weights."""
    family = get_family(model)
    quantized = quantized_kinds(model)
    if quantized or getattr(model.config, "quantization_config", None) is not None:
        raise PruningError(f"the model is quantized ({', '.join(quantized) or 'quantization_config'}); "
                           "prune the 16-bit checkpoint, then quantize the pruned one")
    if config.glu and not family.has_glu:
        raise PruningError(f"--glu: {family.model_type} has no GLU MLP (its decoder MLP is fc1/fc2); "
                           "use --heads or --drop-layers")
    tc = family.get_text_config(model.config)
    layers = family.decoder_layers(model)
    for layer in layers:
        if config.glu:
            kept_width(glu_width(family, layer.get_submodule(family.mlp)), config.glu, config.round_to)
        if config.heads:
            attn = layer.get_submodule(family.attn)
            kept_heads(*head_counts(family, attn, head_dim(attn, tc)), config.heads, config.head_mode)
    if isinstance(config.drop_layers, tuple):
        bad = [i for i in config.drop_layers if i >= len(layers)]
        if bad or len(config.drop_layers) >= len(layers):
            raise PruningError(f"--drop-layers {','.join(map(str, config.drop_layers))}: the model has layers "
                               f"0..{len(layers) - 1} and must keep at least one")
    elif config.drop_layers >= len(layers):
        raise PruningError(f"--drop-layers {config.drop_layers}: the model has {len(layers)} decoder layers; "
                           f"drop at most {len(layers) - 1}")
    if config.trim_vision:
        vision_keep_count(model, family)
    return family


def _calibrate(model, family, processor, config: PruneConfig, calibration) -> CalibrationStats | None:
    if not config.needs_calibration:
        if calibration is not None or config.calibration:
            logger.warning("calibration data given but no option uses it (weight criteria, explicit layers)")
        return None
    if calibration is None and config.calibration:
        calibration = load_calibration(config.calibration)
    if calibration is None:
        raise PruningError(config.missing_calibration_message())
    return collect_stats(
        model, family, processor, calibration, config.calibration_samples, config.seed,
        neurons=bool(config.glu) and NEURON_IMPORTANCE[config.importance].needs_calibration,
        heads=bool(config.heads) and HEAD_IMPORTANCE[config.head_importance].needs_calibration,
        layers=isinstance(config.drop_layers, int) and config.drop_layers > 0,
    )


@torch.no_grad()
def prune(model: nn.Module, processor, config: PruneConfig, calibration=None) -> tuple[nn.Module, dict]:
    """Prune `model` in place; returns it and the manifest step record.

    `calibration`: a dataset (`.samples`, `.open_image`) for activation criteria / `drop_layers=N`;
    when None, `config.calibration` (a directory) is read.
    """
    started = time.perf_counter()
    family = check_request(model, config)
    logger.info("pruning %s with %s", family.model_type, config.to_dict())
    if config.is_noop:
        logger.warning("nothing to prune: every ratio is 0 and no layers are dropped")
    before = param_counts(model)
    stats = _calibrate(model, family, processor, config, calibration)
    tc = family.get_text_config(model.config)
    kept_mlp, kept_attn = [], []
    layers = family.decoder_layers(model)
    for i, layer in enumerate(tqdm(layers, desc="pruning layers", unit="layer", disable=None)):
        if config.glu:
            mlp = layer.get_submodule(family.mlp)
            scores = NEURON_IMPORTANCE[config.importance].fn(glu_weights(family, mlp),
                                                             stats.neurons.get(i) if stats else None)
            keep = select_neurons(scores, config.glu, config.round_to)
            prune_glu(family, mlp, keep)
            kept_mlp.append({"layer": i, "kept": keep.numel(), "sha256": indices_sha256(keep)})
        if config.heads:
            attn = layer.get_submodule(family.attn)
            hd = head_dim(attn, tc)
            n_kv = head_counts(family, attn, hd)[1]
            o_weight = attn.get_submodule(family.o_proj).weight  # (hidden, H * hd)
            scores = HEAD_IMPORTANCE[config.head_importance].fn(o_weight, hd, stats.heads.get(i) if stats else None)
            keep_q, keep_kv = select_heads(scores, n_kv, config.heads, config.head_mode)
            prune_heads(family, attn, keep_q, keep_kv, hd)
            kept_attn.append({"layer": i, "q_heads": keep_q.tolist(), "kv_heads": keep_kv.tolist()})
    odd = sorted({len(a["q_heads"]) * hd for a in kept_attn if len(a["q_heads"]) * hd % 64}) if config.heads else []
    if odd:
        logger.warning("kept attention widths %s (heads x head_dim %d) are not multiples of 64: bitsandbytes 4-bit "
                       "refuses such o_proj layers on CPU and takes slow paths on GPU", odd, hd)
    step: dict = {"kind": "prune", "method": _method(config), "params": config.to_dict(),
                  "criterion": {"neurons": config.importance if config.glu else None,
                                "heads": config.head_importance if config.heads else None},
                  "calibration": stats.record if stats else None,
                  "kept": {"mlp": kept_mlp, "attention": kept_attn}}
    if config.drop_layers:
        if isinstance(config.drop_layers, tuple):
            drop = list(config.drop_layers)
        else:
            drop = most_redundant_layers(stats.layer_similarity, config.drop_layers)
            step["layer_similarity"] = [round(v, 6) for v in stats.layer_similarity.tolist()]
        drop_decoder_layers(model, family, drop)
        step["dropped_layers"] = drop
    if config.trim_vision:
        step["vision_layers_removed"] = trim_vision(model, family)
    step["stock_loadable"] = sync_config(model)
    step["params_before"] = before
    step["params_after"] = param_counts(model)
    step["seconds"] = round(time.perf_counter() - started, 3)
    logger.info("params %s -> %s", f"{sum(before.values()):,}", f"{sum(step['params_after'].values()):,}")
    return model, step


def _method(config: PruneConfig) -> str:
    parts = [name for name, on in (("glu", config.glu), ("heads", config.heads), ("layers", config.drop_layers),
                                   ("vision", config.trim_vision)) if on]
    return "+".join(parts) or "none"


def record_step(manifest: dict, model: nn.Module, step: dict) -> dict:
    """Append a prune step and the resulting architecture / loadability to a manifest."""
    manifest["steps"].append(step)
    manifest["architecture"] = architecture_of(model)
    manifest["stock_loadable"] = step["stock_loadable"]
    return manifest
