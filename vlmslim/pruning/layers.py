"""Depth surgery: drop whole decoder layers, trim vision-encoder layers nobody reads.

Both keep the artifact stock-loadable: the layer counts live in the config (`num_hidden_layers`,
`layer_types`, `vision_feature_layer`), which accepts any value.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from vlmslim.errors import PruningError
from vlmslim.families import Family

logger = logging.getLogger(__name__)


def _configs(model: nn.Module, family: Family) -> list:
    """The text config object(s): the top config's text_config and the decoder's own (usually the same)."""
    configs = [family.get_text_config(model.config), family.language_model(model).config]
    return list({id(c): c for c in configs}.values())


def most_redundant_layers(similarity: torch.Tensor, n: int) -> list[int]:
    """The `n` layers whose output is most similar to their input (cosine, averaged over calibration tokens):
    the layers that change the residual stream least (ShortGPT's block influence = 1 - similarity)."""
    if not 0 < n < similarity.numel():
        raise PruningError(f"--drop-layers {n}: the model has {similarity.numel()} decoder layers; "
                           f"drop between 1 and {similarity.numel() - 1}")
    order = torch.sort(similarity.float(), descending=True, stable=True).indices
    return sorted(order[:n].tolist())


def drop_decoder_layers(model: nn.Module, family: Family, drop: list[int]) -> None:
    """Remove decoder layers `drop` (indices into the current stack) and renumber the rest."""
    layers = family.decoder_layers(model)
    n = len(layers)
    bad = [i for i in drop if not 0 <= i < n]
    if bad:
        raise PruningError(f"--drop-layers {','.join(map(str, drop))}: indices {bad} out of range; "
                           f"the model has layers 0..{n - 1}")
    keep = [i for i in range(n) if i not in set(drop)]
    if not keep:
        raise PruningError(f"--drop-layers would remove all {n} decoder layers")
    parent_path, _, attr = family.layers.rpartition(".")
    lm = family.language_model(model)
    parent = lm.get_submodule(parent_path) if parent_path else lm
    setattr(parent, attr, nn.ModuleList([layers[i] for i in keep]))
    for new_idx, old_idx in enumerate(keep):
        for module in layers[old_idx].modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx  # the KV cache is indexed by it
    for cfg in _configs(model, family):
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, list) and len(types) == n:
            cfg.layer_types = [types[i] for i in keep]
        cfg.num_hidden_layers = len(keep)
    logger.info("dropped decoder layers %s (%d -> %d)", drop, n, len(keep))


def vision_keep_count(model: nn.Module, family: Family) -> int:
    """Vision layers the projector actually reads: hidden_states[i] is the output of layer i (0 = embeddings)."""
    vfl = getattr(model.config, "vision_feature_layer", None)
    if vfl is None or family.vision_layers is None:
        raise PruningError(f"--trim-vision: {family.model_type} reads the vision encoder's final output "
                           "(no vision_feature_layer), so no vision layer is unused")
    n = len(family.vision_layer_list(model))
    wanted = [vfl] if isinstance(vfl, int) else list(vfl)
    keep = max(i if i >= 0 else n + 1 + i for i in wanted)
    if keep >= n:
        raise PruningError(f"--trim-vision: vision_feature_layer {vfl} reads the last of the {n} vision layers; "
                           "nothing to trim")
    return keep


def trim_vision(model: nn.Module, family: Family) -> list[int]:
    """Drop the vision layers after `vision_feature_layer`; returns the removed indices."""
    keep = vision_keep_count(model, family)
    layers = family.vision_layer_list(model)
    n = len(layers)
    attr = family.vision_layers.rpartition(".")[2]
    parent = next(m for m in model.modules() if getattr(m, attr, None) is layers)  # the encoder, in any layout
    setattr(parent, attr, nn.ModuleList(list(layers)[:keep]))
    vfl = model.config.vision_feature_layer
    # Negative indices count from the end of hidden_states (n + 1 entries); re-anchor them on the new end.
    shift = lambda i: i if i >= 0 else i + (n - keep)  # noqa: E731
    model.config.vision_feature_layer = shift(vfl) if isinstance(vfl, int) else [shift(i) for i in vfl]
    vision_cfgs = {id(c): c for c in (model.config.vision_config, getattr(parent, "config", None)) if c is not None}
    for cfg in vision_cfgs.values():
        if hasattr(cfg, "num_hidden_layers"):
            cfg.num_hidden_layers = keep
    logger.info("trimmed vision layers %d..%d (vision_feature_layer %s -> %s)", keep, n - 1, vfl,
                model.config.vision_feature_layer)
    return list(range(keep, n))

