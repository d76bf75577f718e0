"""The GLU-MLP weights an importance criterion scores (the cut itself is `vlmslim.shapes.prune_glu`)."""

from __future__ import annotations

from torch import nn

from vlmslim.families import Family
from vlmslim.pruning.importance import GLUWeights
from vlmslim.shapes import glu_linears


def glu_weights(family: Family, mlp: nn.Module) -> GLUWeights:
    gate, up, down = glu_linears(family, mlp)
    return GLUWeights(gate=gate.weight, up=up.weight, down=down.weight)
