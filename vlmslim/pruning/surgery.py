"""The architecture record of a pruned model, the config it is saved with, and rebuilding it at load.

A pruned model's true shapes live in its modules. `architecture_of` writes them down per decoder layer
(the manifest's `architecture`). `sync_config` then writes the text config: the pruned values where the
installed transformers accepts them *and* rebuilds exactly these shapes from them (checked by building
an empty skeleton), else the previous, larger values, which `apply_architecture` cuts down at load.

Manifest `architecture` (format "vlmslim-architecture/1"):
    {"format": ..., "text_layers": [{"intermediate_size": 7680, "num_attention_heads": 24,
                                     "num_key_value_heads": 24, "head_dim": 128}, ...],   # one per layer
     "vision_num_layers": 23}
`intermediate_size` is absent for families without a GLU MLP (OPT).
"""

from __future__ import annotations

import copy
import logging

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn

from vlmslim.errors import ModelLoadError, PruningError
from vlmslim.families import Family, get_family
from vlmslim.pruning.glu import glu_width, prune_glu
from vlmslim.pruning.heads import head_counts, head_dim, prune_heads

logger = logging.getLogger(__name__)

ARCH_FORMAT = "vlmslim-architecture/1"
_ATTN_ATTRS = ("num_key_value_groups", "head_dim", "num_heads", "num_key_value_heads")


def layer_shape(family: Family, layer: nn.Module, text_config) -> dict:
    attn = layer.get_submodule(family.attn)
    hd = head_dim(attn, text_config)
    q, kv = head_counts(family, attn, hd)
    shape = {"num_attention_heads": q, "num_key_value_heads": kv, "head_dim": hd}
    if family.has_glu:
        shape = {"intermediate_size": glu_width(family, layer.get_submodule(family.mlp)), **shape}
    return shape


def architecture_of(model: nn.Module) -> dict:
    family = get_family(model)
    tc = family.get_text_config(model.config)
    arch = {"format": ARCH_FORMAT,
            "text_layers": [layer_shape(family, layer, tc) for layer in family.decoder_layers(model)]}
    if family.vision_layers is not None:
        arch["vision_num_layers"] = len(family.vision_layer_list(model))
    return arch


def apply_architecture(model: nn.Module, arch: dict) -> None:
    """Cut a model built from its (superset) config down to the recorded shapes. Meant for an empty
    (meta) skeleton before `load_state_dict(assign=True)`: the kept indices are arange(k), the weights
    come from the checkpoint."""
    if not arch or arch.get("format") != ARCH_FORMAT:
        raise ModelLoadError(f"unknown architecture record {str(arch)[:80]!r} (expected format {ARCH_FORMAT})")
    family = get_family(model)
    tc = family.get_text_config(model.config)
    layers = family.decoder_layers(model)
    if len(layers) != len(arch["text_layers"]):
        raise ModelLoadError(f"config has {len(layers)} decoder layers, the manifest architecture "
                             f"{len(arch['text_layers'])}")
    for i, (layer, want) in enumerate(zip(layers, arch["text_layers"])):
        have = layer_shape(family, layer, tc)
        if have == want:
            continue
        if have["head_dim"] != want["head_dim"] or any(want[k] > have[k] for k in want):
            raise ModelLoadError(f"decoder layer {i}: recorded shape {want} does not fit the config's {have}")
        if "intermediate_size" in want and want["intermediate_size"] != have["intermediate_size"]:
            prune_glu(family, layer.get_submodule(family.mlp), torch.arange(want["intermediate_size"]))
        if (want["num_attention_heads"], want["num_key_value_heads"]) != (have["num_attention_heads"],
                                                                        have["num_key_value_heads"]):
            prune_heads(family, layer.get_submodule(family.attn), torch.arange(want["num_attention_heads"]),
                        torch.arange(want["num_key_value_heads"]), want["head_dim"])
    if "vision_num_layers" in arch and len(family.vision_layer_list(model)) != arch["vision_num_layers"]:
        raise ModelLoadError(f"config has {len(family.vision_layer_list(model))} vision layers, the manifest "
                             f"architecture {arch['vision_num_layers']}")


# ---------------------------------------------------------------- config


def _skeleton(model: nn.Module, config) -> nn.Module:
    from accelerate import init_empty_weights

    with init_empty_weights():
        return type(model)._from_config(config)


def _same_structure(model: nn.Module, other: nn.Module) -> bool:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in other.state_dict().items()}:
        return False
    family = get_family(model)
    for a, b in zip(family.decoder_layers(model), family.decoder_layers(other)):
        a, b = a.get_submodule(family.attn), b.get_submodule(family.attn)
        if any(getattr(a, k, None) != getattr(b, k, None) for k in _ATTN_ATTRS):
            return False
    return True


def _uniform(layers: list[dict], key: str):
    values = {layer.get(key) for layer in layers}
    return values.pop() if len(values) == 1 else None


def _with_text_updates(config, family: Family, updates: dict):
    """A validated copy of `config` with text-config updates, or None when the config class refuses them."""
    candidate = copy.deepcopy(config)
    tc = family.get_text_config(candidate)
    for k, v in updates.items():
        setattr(tc, k, v)
    try:  # the round trip a stock `from_pretrained` makes, with its validation
        return type(config).from_dict(candidate.to_dict())
    except (ValueError, StrictDataclassError) as e:
        logger.debug("config refuses %s: %s", updates, e)
        return None


def sync_config(model: nn.Module) -> bool:
    """Write the pruned widths into the model's text config where expressible; True when stock
    `from_pretrained` of the saved config rebuilds the model exactly (stock-loadable)."""
    family = get_family(model)
    tc = family.get_text_config(model.config)
    arch = architecture_of(model)
    layers = arch["text_layers"]
    mlp_updates = {}
    if family.has_glu and _uniform(layers, "intermediate_size") is not None:
        mlp_updates["intermediate_size"] = _uniform(layers, "intermediate_size")
    head_updates = {}
    if _uniform(layers, "num_attention_heads") is not None and _uniform(layers, "num_key_value_heads") is not None:
        head_updates = {"num_attention_heads": _uniform(layers, "num_attention_heads"),
                        "num_key_value_heads": _uniform(layers, "num_key_value_heads"),
                        "head_dim": layers[0]["head_dim"]}
        head_updates = {k: v for k, v in head_updates.items() if hasattr(tc, k)}  # never add a key
    chosen = {}
    for updates in ({**mlp_updates, **head_updates}, mlp_updates):
        candidate = _with_text_updates(model.config, family, updates)
        if candidate is not None and _same_structure(model, _skeleton(model, candidate)):
            chosen, stock = updates, True
            break
    else:
        # Not expressible (e.g. 22 of 32 heads: LlamaConfig wants hidden % heads == 0). Keep the current,
        # larger head counts so the config still builds a superset; apply_architecture cuts it at load.
        stock = False
        if mlp_updates and _with_text_updates(model.config, family, mlp_updates) is not None:
            chosen = mlp_updates
    for k, v in chosen.items():
        setattr(tc, k, v)
    if not stock:
        rebuilt = _skeleton(model, copy.deepcopy(model.config))
        apply_architecture(rebuilt, arch)
        if not _same_structure(model, rebuilt):
            raise PruningError("internal: the pruned model cannot be rebuilt from its config + architecture")
        logger.warning("the pruned shapes are not expressible in a stock %s config; the checkpoint loads with "
                       "vlmslim.load_model only", type(tc).__name__)
    return stock


def rebuilt_class(cls: type, arch: dict) -> type:
    """A subclass of the stock model class whose constructor ends with `apply_architecture(self, arch)`.

    `rebuilt_class(cls, arch).from_pretrained(path)` then loads a pruned checkpoint whose config keeps
    unpruned head counts, with transformers' own key conversion, dtype, device_map and quantization
    (bitsandbytes replaces the already-cut Linear layers). Same class name, so per-class checkpoint
    conversion mappings still apply; reset `model.__class__ = cls` after loading.
    """

    def __init__(self, config, *args, **kwargs):
        cls.__init__(self, config, *args, **kwargs)
        apply_architecture(self, arch)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})
