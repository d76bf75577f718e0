"""GLU-MLP surgery: remove intermediate neurons of `down(act(gate(x)) * up(x))`."""

from __future__ import annotations

import torch
from torch import nn

from vlmslim.families import Family
from vlmslim.pruning.importance import GLUWeights
from vlmslim.pruning.slicing import slice_linear


def glu_linears(family: Family, mlp: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    return (mlp.get_submodule(family.gate_proj), mlp.get_submodule(family.up_proj),
            mlp.get_submodule(family.down_proj))


def glu_weights(family: Family, mlp: nn.Module) -> GLUWeights:
    gate, up, down = glu_linears(family, mlp)
    return GLUWeights(gate=gate.weight, up=up.weight, down=down.weight)


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
