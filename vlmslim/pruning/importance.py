"""Importance criteria: pure functions from weights (and calibration statistics) to one score per unit.

Higher score = more important = kept. Neuron criteria score the I intermediate neurons of one GLU
MLP `down(act(gate(x)) * up(x))`; head criteria score the H query heads of one attention block.
Nothing here touches a model: `prune.py` pulls the tensors out, `select.py` turns scores into indices.
Weights arrive in the layout of `nn.Linear.weight`: (out_features, in_features).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GLUWeights:
    gate: torch.Tensor  # (I, hidden): row i feeds neuron i
    up: torch.Tensor  # (I, hidden)
    down: torch.Tensor  # (hidden, I): column i reads neuron i


@dataclass(frozen=True)
class NeuronStats:
    """Calibration statistics of the down_proj input h = act(gate(x)) * up(x), over all tokens."""

    abs_mean: torch.Tensor  # (I,): mean |h_i|
    l2: torch.Tensor  # (I,): sqrt(sum h_i^2), the activation norm used by Wanda-style scores


@dataclass(frozen=True)
class HeadStats:
    out_norm: torch.Tensor  # (H,): mean over tokens of ||head output||_2 (the o_proj input slice)


@dataclass(frozen=True)
class Criterion:
    fn: Callable
    needs_calibration: bool
    help: str


NEURON_IMPORTANCE: dict[str, Criterion] = {}
HEAD_IMPORTANCE: dict[str, Criterion] = {}


def _register(registry: dict, name: str, needs_calibration: bool = False):
    def deco(fn):
        registry[name] = Criterion(fn, needs_calibration, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float()


# ---------------------------------------------------------------- MLP neurons: fn(w: GLUWeights, s: NeuronStats | None)


@_register(NEURON_IMPORTANCE, "maw")
def maw(w: GLUWeights, stats: NeuronStats | None = None) -> torch.Tensor:
    """max + |min| of the neuron's gate row plus the same of its up row (peak-to-peak; seed 004's criterion)."""
    g, u = _f32(w.gate), _f32(w.up)
    return g.amax(1) + g.amin(1).abs() + u.amax(1) + u.amin(1).abs()


@_register(NEURON_IMPORTANCE, "l2")
def l2(w: GLUWeights, stats: NeuronStats | None = None) -> torch.Tensor:
    """L2 norm of the gate row plus L2 norm of the up row."""
    return _f32(w.gate).norm(dim=1) + _f32(w.up).norm(dim=1)


@_register(NEURON_IMPORTANCE, "vow")
def vow(w: GLUWeights, stats: NeuronStats | None = None) -> torch.Tensor:
    """Variance of the gate row plus variance of the up row."""
    return _f32(w.gate).var(dim=1) + _f32(w.up).var(dim=1)


@_register(NEURON_IMPORTANCE, "pon")
def pon(w: GLUWeights, stats: NeuronStats | None = None) -> torch.Tensor:
    """Product of the L1 norms of the gate and up rows."""
    return _f32(w.gate).abs().sum(1) * _f32(w.up).abs().sum(1)


@_register(NEURON_IMPORTANCE, "activation", needs_calibration=True)
def activation(w: GLUWeights, stats: NeuronStats) -> torch.Tensor:
    """Mean |act(gate(x)) * up(x)| of the neuron over calibration tokens."""
    return stats.abs_mean.float()


@_register(NEURON_IMPORTANCE, "hybrid", needs_calibration=True)
def hybrid(w: GLUWeights, stats: NeuronStats) -> torch.Tensor:
    """Weight x activation (Wanda-style): ||down column i||_2 * ||h_i||_2 over calibration tokens."""
    # Neuron i adds h_i * down[:, i] to the residual stream; this bounds that contribution's norm.
    return _f32(w.down).norm(dim=0) * stats.l2.float().to(w.down.device)


# ---------------------------------------------------------------- attention heads: fn(o_weight, head_dim, s)


@_register(HEAD_IMPORTANCE, "o_norm")
def o_norm(o_weight: torch.Tensor, head_dim: int, stats: HeadStats | None = None) -> torch.Tensor:
    """Frobenius norm of the head's o_proj slice (the columns that read the head's output)."""
    hidden, width = o_weight.shape  # (hidden, H * head_dim)
    return _f32(o_weight).view(hidden, width // head_dim, head_dim).pow(2).sum(dim=(0, 2)).sqrt()


@_register(HEAD_IMPORTANCE, "activation", needs_calibration=True)
def head_activation(o_weight: torch.Tensor, head_dim: int, stats: HeadStats) -> torch.Tensor:
    """Mean L2 norm of the head's output (the o_proj input slice) over calibration tokens."""
    return stats.out_norm.float()
