"""Sibling projections fused for decode: q|k|v and gate|up read the same input, so one product over the
rows of all of them reads that input once and launches one kernel instead of three / two.

Why: at batch 1 every decode-step Linear is a GEMV whose time includes a fixed launch-and-tail cost. On
one H100 (docs/lowbit_kernels.md) q|k|v as one 12288 x 4096 GEMV takes 35.5 us in fp16 vs 3 x 15.5 us,
and 15.8 us vs 3 x 6.9 us on int4 tinygemm. Not yet timed end to end (the next GPU run's job).

How: in each decoder layer the first sibling (q_proj, gate_proj) becomes a `FusedProjection` that runs
the concatenated module and hands the other siblings' rows to `SiblingRows` modules that replace them,
through a shared `_Handoff`. This relies on the family calling the siblings on the same input, first
one first (`Family.fusable_projections`, checked per family by tests). The originals' tensors become
views of the fused ones, so fusing costs no memory beyond derived kernel layouts; `unfuse_projections`
puts the originals back.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from vlmslim.families import get_family
from vlmslim.fp8 import Fp8WeightOnlyLinear
from vlmslim.int4 import Int4WeightOnlyLinear
from vlmslim.int8dq import Int8DynamicLinear

logger = logging.getLogger(__name__)


class _Handoff:
    """The rows of the siblings computed by the last `FusedProjection` call (one per group)."""

    def __init__(self):
        self.parts: tuple[torch.Tensor, ...] = ()


class FusedProjection(nn.Module):
    """Stands in for the first sibling: y = fused(x) split by sibling; returns the first's rows."""

    def __init__(self, fused: nn.Module, sizes: list[int], handoff: _Handoff, originals: list[nn.Module]):
        super().__init__()
        self.fused, self.sizes, self.handoff = fused, sizes, handoff
        self._originals = originals  # a plain list: not submodules, not in the state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.fused(x).split(self.sizes, dim=-1)  # (..., N_i) each
        self.handoff.parts = parts
        return parts[0]


class SiblingRows(nn.Module):
    """Stands in for a later sibling: its rows of the `FusedProjection` call just before it."""

    def __init__(self, handoff: _Handoff, index: int, in_features: int, out_features: int):
        super().__init__()
        self.handoff, self.index = handoff, index
        # what code that sizes a projection reads (KV bytes per step, head counts); the rows stay in the fused module
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.handoff.parts
        if self.index == len(parts) - 1:
            # the last sibling lets go: otherwise every layer would keep its last output alive (measured on an
            # H100: +1.3 GB at a 592-token prefill, and it grows with batch and prompt)
            self.handoff.parts = ()
        return parts[self.index]


def _construct(like: nn.Module, in_features: int, out_features: int, bias: bool) -> nn.Module:
    """An empty (meta) module of `like`'s class and settings with `out_features` rows."""
    bias_dtype = like.bias.dtype if like.bias is not None else torch.float32
    if type(like) is nn.Linear:
        return nn.Linear(in_features, out_features, bias, device="meta", dtype=like.weight.dtype)
    if type(like) is Int4WeightOnlyLinear:
        m = Int4WeightOnlyLinear(in_features, out_features, bias, like.group_size, device="meta",
                                 dtype=like.scales.dtype, bias_dtype=bias_dtype)
        m.kernel = like.kernel  # its layout is derived by `prepare()` once the tensors are loaded
        return m
    if isinstance(like, (Fp8WeightOnlyLinear, Int8DynamicLinear)):  # Int8WeightOnlyLinear included
        return type(like)(in_features, out_features, bias, device="meta", bias_dtype=bias_dtype)
    raise TypeError(f"cannot fuse {type(like).__name__} layers")


FUSABLE = (nn.Linear, Int4WeightOnlyLinear, Fp8WeightOnlyLinear, Int8DynamicLinear)  # not bitsandbytes


def why_not(mods: list[nn.Module]) -> str | None:
    """Why these siblings cannot be one module (None: they can)."""
    first = mods[0]
    if type(first) not in FUSABLE and not isinstance(first, Fp8WeightOnlyLinear):  # Int8WeightOnlyLinear too
        return f"{type(first).__name__} layers cannot be fused"
    if any(type(m) is not type(first) or m.in_features != first.in_features for m in mods) \
            or len({m.bias is None for m in mods}) > 1 or len({getattr(m, "group_size", 0) for m in mods}) > 1:
        return "siblings differ in class, input width, bias or group size"
    return None


def concat_rows(mods: list[nn.Module]) -> nn.Module:
    """One module whose output rows are `mods`' rows in order (every saved tensor is row-major: weights,
    flat codes, per-row or per-group scales and biases all concatenate along dim 0)."""
    first = mods[0]
    if (why := why_not(mods)) is not None:
        raise TypeError(why)
    states = [m.state_dict() for m in mods]
    fused = _construct(first, first.in_features, sum(m.out_features for m in mods), first.bias is not None)
    fused.load_state_dict({k: torch.cat([s[k] for s in states]) for k in states[0]}, assign=True)
    if hasattr(fused, "prepare"):
        fused.prepare()  # the kernel's derived layout
    return fused.requires_grad_(False)


def _share_storage(fused: nn.Module, mods: list[nn.Module]) -> None:
    """Make each original's tensors views of the fused ones (no second copy while fused)."""
    start = 0
    full = fused.state_dict()
    for m in mods:
        stop = start + m.out_features
        for name, t in m.state_dict().items():
            per_row = t.numel() // m.out_features
            view = full[name].view(-1)[start * per_row:stop * per_row].view(t.shape)
            owner = m.get_submodule(name.rpartition(".")[0]) if "." in name else m
            leaf = name.rpartition(".")[2]
            if leaf in owner._parameters:
                owner._parameters[leaf] = nn.Parameter(view, requires_grad=False)
            else:
                owner._buffers[leaf] = view
        if hasattr(m, "release"):  # derived kernel layouts: rebuilt by `prepare()` on unfuse
            m.release()
        start = stop


def _groups(family) -> list[tuple[str, tuple[str, ...]]]:
    groups = [(family.attn, (family.q_proj, family.k_proj, family.v_proj))]
    if family.has_glu:
        groups.append((family.mlp, (family.gate_proj, family.up_proj)))
    return groups


def fuse_projections(model: nn.Module) -> int:
    """Fuse q|k|v and gate|up in every decoder layer (in place); returns how many groups were fused."""
    family = get_family(model)
    if not family.fusable_projections:
        raise ValueError(f"{family.model_type}: its layers do not call q/k/v (gate/up) on one input in order; "
                         "projection fusion is not supported")
    todo = []
    for layer in family.decoder_layers(model):
        for parent_name, names in _groups(family):
            parent = layer.get_submodule(parent_name)
            mods = [parent.get_submodule(n) for n in names]
            if isinstance(mods[0], FusedProjection):
                continue  # already fused
            if (why := why_not(mods)) is not None:  # checked for every group before any is changed
                raise ValueError(f"cannot fuse {parent_name}.{{{','.join(names)}}}: {why}")
            todo.append((parent, names, mods))
    for parent, names, mods in todo:
        fused = concat_rows(mods)
        _share_storage(fused, mods)
        handoff = _Handoff()
        parent.set_submodule(names[0], FusedProjection(fused, [m.out_features for m in mods], handoff, mods))
        for i, n in enumerate(names[1:], start=1):
            parent.set_submodule(n, SiblingRows(handoff, i, mods[i].in_features, mods[i].out_features))
    logger.info("fused %d projection groups (q|k|v, gate|up)", len(todo))
    return len(todo)


def unfuse_projections(model: nn.Module) -> None:
    """Put the original sibling modules back (their tensors stay views of the fused storage)."""
    family = get_family(model)
    for layer in family.decoder_layers(model):
        for parent_name, names in _groups(family):
            parent = layer.get_submodule(parent_name)
            first = parent.get_submodule(names[0])
            if not isinstance(first, FusedProjection):
                continue
            for n, m in zip(names, first._originals):
                if hasattr(m, "prepare"):
                    m.prepare()
                parent.set_submodule(n, m)


def fused_groups(model: nn.Module) -> int:
    """How many projection groups of `model` run fused now."""
    return sum(isinstance(m, FusedProjection) for m in model.modules())


@contextlib.contextmanager
def fused_projections(model: nn.Module):
    """`with fused_projections(model): ...` decode fused, then the model is as before."""
    fuse_projections(model)
    try:
        yield model
    finally:
        unfuse_projections(model)
