"""Slice an `nn.Linear` in place, keeping its class (bitsandbytes converts only exact `nn.Linear`)."""

from __future__ import annotations

import torch
from torch import nn


def slice_linear(linear: nn.Linear, dim: int, keep: torch.Tensor) -> None:
    """Keep output rows (dim 0) or input columns (dim 1) `keep` of `linear`; the bias follows the rows.

    Works on meta tensors too: `apply_architecture` cuts an empty skeleton to the recorded shapes.
    """
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
