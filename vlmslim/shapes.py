"""The per-layer shapes of a (pruned) model: read them, cut a model down to them, rebuild them at load.

Pruning decides *which* neurons and heads go (`vlmslim.pruning`); the mechanics of cutting live here
because loading needs them too: a pruned checkpoint whose shapes the stock config cannot express is
loaded by cutting an empty skeleton of its (superset) config down to the manifest's `architecture`.

Manifest `architecture` (format "vlmslim-architecture/1"):
    {"format": ..., "text_layers": [{"intermediate_size": 7680, "num_attention_heads": 24,
                                     "num_key_value_heads": 24, "head_dim": 128}, ...],   # one per layer
     "vision_num_layers": 23}
`intermediate_size` is absent for families without a GLU MLP (OPT).
"""

from __future__ import annotations

import torch
from torch import nn

from vlmslim.errors import ModelLoadError
from vlmslim.families import Family, get_family

ARCH_FORMAT = "vlmslim-architecture/1"


# ---------------------------------------------------------------- slicing


def slice_linear(linear: nn.Linear, dim: int, keep: torch.Tensor) -> None:
    """Keep output rows (dim 0) or input columns (dim 1) `keep` of `linear` in place, keeping its class
    (bitsandbytes converts only exact `nn.Linear`); the bias follows the rows. Works on meta tensors."""
    weight = linear.weight  # (out, in)
    keep = keep.to(weight.device)
    linear.weight = nn.Parameter(weight.data.index_select(dim, keep).contiguous(), requires_grad=weight.requires_grad)
    if dim == 0:
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.data.index_select(0, keep).contiguous(),
                                       requires_grad=linear.bias.requires_grad)
        linear.out_features = keep.numel()
    else:
        linear.in_features = keep.numel()


# ---------------------------------------------------------------- GLU MLP: down(act(gate(x)) * up(x))


def glu_linears(family: Family, mlp: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    return (mlp.get_submodule(family.gate_proj), mlp.get_submodule(family.up_proj),
            mlp.get_submodule(family.down_proj))


def glu_width(family: Family, mlp: nn.Module) -> int:
    return glu_linears(family, mlp)[0].out_features


def prune_glu(family: Family, mlp: nn.Module, keep: torch.Tensor) -> None:
    """Keep neurons `keep` (sorted int64): rows of gate/up, columns of down."""
    gate, up, down = glu_linears(family, mlp)
    slice_linear(gate, 0, keep)  # (I, hidden) -> (k, hidden)
    slice_linear(up, 0, keep)  # (I, hidden) -> (k, hidden)
    slice_linear(down, 1, keep)  # (hidden, I) -> (hidden, k); down's bias is per hidden unit, untouched
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = keep.numel()


# ---------------------------------------------------------------- attention heads
# Query head j reads KV head j // (H / H_kv). Selection (`pruning.select.select_heads`) keeps whole groups
# or the same number of query heads in every group, so after slicing the kept query heads, in order,
# still map onto the kept KV heads in order, and only `num_key_value_groups` changes.


def head_dim(attn: nn.Module, text_config) -> int:
    hd = getattr(attn, "head_dim", None) or getattr(text_config, "head_dim", None)
    return int(hd or text_config.hidden_size // text_config.num_attention_heads)


def head_counts(family: Family, attn: nn.Module, hd: int) -> tuple[int, int]:
    """(query heads, KV heads) of one attention block, read from its weights (not the config, which
    may keep the unpruned counts when the pruned ones are not expressible; see pruning.surgery)."""
    q = attn.get_submodule(family.q_proj).out_features // hd
    kv = attn.get_submodule(family.k_proj).out_features // hd
    return q, kv


def _rows(heads: torch.Tensor, hd: int) -> torch.Tensor:
    # head h owns rows [h * hd, (h + 1) * hd) of q/k/v and the same columns of o
    return (heads[:, None] * hd + torch.arange(hd)).flatten()


def prune_heads(family: Family, attn: nn.Module, keep_q: torch.Tensor, keep_kv: torch.Tensor, hd: int) -> None:
    """Keep query heads `keep_q` and KV heads `keep_kv` (sorted int64) of one attention block."""
    q_rows, kv_rows = _rows(keep_q, hd), _rows(keep_kv, hd)
    slice_linear(attn.get_submodule(family.q_proj), 0, q_rows)  # (H*hd, hidden) -> (h*hd, hidden)
    slice_linear(attn.get_submodule(family.k_proj), 0, kv_rows)  # (H_kv*hd, hidden) -> (h_kv*hd, hidden)
    slice_linear(attn.get_submodule(family.v_proj), 0, kv_rows)
    slice_linear(attn.get_submodule(family.o_proj), 1, q_rows)  # (hidden, H*hd) -> (hidden, h*hd)
    set_head_attributes(attn, keep_q.numel(), keep_kv.numel())


def set_head_attributes(attn: nn.Module, n_q: int, n_kv: int) -> None:
    """Per-module counts that the attention forward reads (Llama: groups only; Qwen2.5-VL, OPT: heads too)."""
    for name, value in (("num_key_value_groups", n_q // n_kv), ("num_heads", n_q),
                        ("num_attention_heads", n_q), ("num_key_value_heads", n_kv)):
        if hasattr(attn, name):
            setattr(attn, name, value)


# ---------------------------------------------------------------- the architecture record


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
    if not isinstance(arch, dict) or arch.get("format") != ARCH_FORMAT:
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
