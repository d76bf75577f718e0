"""The config a pruned model is saved with.

A pruned model's true shapes live in its modules (`vlmslim.shapes.architecture_of` writes them down per
decoder layer: the manifest's `architecture`). `sync_config` writes the text config: the pruned values
where the installed transformers accepts them *and* rebuilds exactly these shapes from them (checked by
building an empty skeleton), else the previous, larger values, which `vlmslim.shapes.apply_architecture`
cuts down at load.
"""

from __future__ import annotations

import copy
import logging

from huggingface_hub.errors import StrictDataclassError
from torch import nn

from vlmslim.errors import PruningError
from vlmslim.families import Family, get_family
from vlmslim.loading import empty_model
from vlmslim.shapes import apply_architecture, architecture_of

logger = logging.getLogger(__name__)

_ATTN_ATTRS = ("num_key_value_groups", "head_dim", "num_heads", "num_key_value_heads")


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


def _rebuilds(model: nn.Module, candidate) -> bool:
    """Whether stock construction from `candidate` gives exactly `model`'s structure. Some families accept a
    config their modules then refuse: Qwen2.5-VL's and OPT's attention `__init__` raise ValueError when
    hidden_size % num_heads != 0 (Llama's config refuses it earlier, in `_with_text_updates`)."""
    try:
        return _same_structure(model, empty_model(candidate, cls=type(model)))
    except ValueError as e:
        logger.debug("stock %s refuses the pruned config: %s", type(model).__name__, e)
        return False


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
        if candidate is not None and _rebuilds(model, candidate):
            chosen, stock = updates, True
            break
    else:
        # Not expressible (e.g. 22 of 32 heads: LlamaConfig wants hidden % heads == 0; Qwen2.5-VL's and OPT's
        # attention constructors refuse 3 heads of a 64 hidden). Keep the current, larger head counts so the
        # config still builds a superset; apply_architecture cuts it at load.
        stock = False
        if mlp_updates and _with_text_updates(model.config, family, mlp_updates) is not None:
            chosen = mlp_updates
    for k, v in chosen.items():
        setattr(tc, k, v)
    if not stock:
        rebuilt = empty_model(copy.deepcopy(model.config), arch, cls=type(model))
        if not _same_structure(model, rebuilt):
            raise PruningError("internal: the pruned model cannot be rebuilt from its config + architecture")
        logger.warning("the pruned shapes are not expressible in a stock %s config; the checkpoint loads with "
                       "vlmslim.load_model only", type(tc).__name__)
    return stock
