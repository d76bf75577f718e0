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
class GLUSaliency:
    """First-order Taylor saliency sum_b |w * dL_b/dw| of one GLU MLP's weights, summed over calibration
    samples b and reduced to the neuron axis (the full (I, hidden) products are never kept)."""

    gate: torch.Tensor  # (I,): sums over the gate rows
    up: torch.Tensor  # (I,): sums over the up rows
    down: torch.Tensor  # (I,): sums over the down columns


@dataclass(frozen=True)
class AttentionSaliency:
    """The same for one attention block, per row of q/k/v and per column of o (head h owns rows/columns
    [h * head_dim, (h + 1) * head_dim))."""

    q: torch.Tensor  # (H * hd,)
    k: torch.Tensor  # (H_kv * hd,)
    v: torch.Tensor  # (H_kv * hd,)
    o: torch.Tensor  # (H * hd,): sums over the o_proj columns


@dataclass(frozen=True)
class NeuronStats:
    """Calibration statistics of the down_proj input h = act(gate(x)) * up(x), over all tokens; each field
    is None when the chosen criterion / allocation did not ask for it."""

    abs_mean: torch.Tensor | None = None  # (I,): mean |h_i|
    l2: torch.Tensor | None = None  # (I,): sqrt(sum h_i^2), the activation norm used by Wanda-style scores
    taylor: GLUSaliency | None = None


@dataclass(frozen=True)
class HeadStats:
    out_norm: torch.Tensor | None = None  # (H,): mean over tokens of ||head output||_2 (the o_proj input slice)
    in_l2: torch.Tensor | None = None  # (H * hd,): sqrt(sum x_j^2) of each o_proj input column (OWL)
    taylor: AttentionSaliency | None = None


@dataclass(frozen=True)
class Criterion:
    fn: Callable
    needs_calibration: bool
    help: str
    needs_gradients: bool = False  # the statistics come from a backward pass (teacher answers' LM loss)


NEURON_IMPORTANCE: dict[str, Criterion] = {}
HEAD_IMPORTANCE: dict[str, Criterion] = {}


def _register(registry: dict, name: str, needs_calibration: bool = False, needs_gradients: bool = False):
    def deco(fn):
        registry[name] = Criterion(fn, needs_calibration, (fn.__doc__ or "").strip().splitlines()[0], needs_gradients)
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


@_register(NEURON_IMPORTANCE, "taylor", needs_calibration=True, needs_gradients=True)
def taylor(w: GLUWeights, stats: NeuronStats) -> torch.Tensor:
    """First-order Taylor (LLM-Pruner): sum of |w * dL/dw| over the neuron's gate row, up row and down column."""
    # L = LM loss on the unpruned model's own greedy answers, one calibration sample per backward pass;
    # the per-sample saliencies are summed (Molchanov et al.'s accumulation over batches).
    t = stats.taylor
    return (t.gate.float() + t.up.float() + t.down.float()).to(w.gate.device)


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


@_register(HEAD_IMPORTANCE, "taylor", needs_calibration=True, needs_gradients=True)
def head_taylor(o_weight: torch.Tensor, head_dim: int, stats: HeadStats) -> torch.Tensor:
    """First-order Taylor: sum of |w * dL/dw| over the head's q rows and o columns, plus its KV group's k/v rows."""
    t = stats.taylor
    n_q, n_kv = t.q.numel() // head_dim, t.k.numel() // head_dim
    per_q = t.q.float().view(n_q, head_dim).sum(1) + t.o.float().view(n_q, head_dim).sum(1)  # (H,)
    per_kv = (t.k.float() + t.v.float()).view(n_kv, head_dim).sum(1)  # (H_kv,)
    # A KV group's k/v rows go only with the whole group: spread them evenly over its query heads, so a
    # group's summed score (groups mode) is exact and the ranking inside a group (query mode) is unchanged.
    return per_q + per_kv.repeat_interleave(n_q // n_kv) / (n_q // n_kv)


# ---------------------------------------------------------------- layer scores for allocation (one number per layer)

OWL_M = 5.0  # OWL's outlier threshold: a score is an outlier above M x the layer's mean score (paper default)


def outlier_ratio(weight: torch.Tensor, in_l2: torch.Tensor, m: float = OWL_M) -> float:
    """OWL's layer-wise outlier ratio: the share of Wanda scores |W_ij| * ||x_j||_2 above m x their mean.
    `weight` (out, in) is the projection whose input columns the structured cut removes (down_proj, o_proj);
    `in_l2` (in,) the calibration norm of each input channel."""
    scores = _f32(weight).abs() * in_l2.float().to(weight.device)[None, :]  # (out, in)
    return (scores > m * scores.mean()).float().mean().item()
