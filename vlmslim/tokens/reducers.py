"""Visual-token reducers: (B, N, D) projected image features -> (B, K, D), K <= N.

Pure functions over tensors, one registry. Every reducer keeps the kept tokens in raster order (the
language model saw the grid row by row in training) and is the identity when K >= N.

- `pool`: average pooling of the sqrt(N) x sqrt(N) grid to sqrt(K) x sqrt(K) (K a perfect square).
- `visionzip` (Yang et al., 2024): the K - C "dominant" tokens most attended by the vision tower's CLS
  query at the feature layer, plus C "contextual" tokens: the remaining tokens, merged onto C targets
  spread evenly over them by feature similarity (each token goes to its most similar target; targets
  average their group).
- `random`: one seeded uniform choice of K grid positions for every image (the control to beat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Reducer:
    fn: Callable  # (features (B, N, D), k, *, cls_attention (B, N) | None, seed) -> (B, K, D)
    needs_cls_attention: bool = False
    help: str = ""


def pool(features: torch.Tensor, k: int, *, cls_attention=None, seed: int = 0) -> torch.Tensor:
    b, n, d = features.shape
    side, out = math.isqrt(n), math.isqrt(k)
    if side * side != n:
        raise ValueError(f"pool needs a square token grid, got {n} tokens")
    if out * out != k:
        raise ValueError(f"pool keeps a square grid: --image-tokens must be a perfect square (e.g. "
                         f"{max(1, out) ** 2} or {(out + 1) ** 2}), got {k}")
    grid = features.transpose(1, 2).reshape(b, d, side, side)  # (B, D, side, side): raster order
    pooled = F.adaptive_avg_pool2d(grid.float(), out).to(features.dtype)  # (B, D, out, out)
    return pooled.flatten(2).transpose(1, 2)  # (B, K, D)


def random_keep(features: torch.Tensor, k: int, *, cls_attention=None, seed: int = 0) -> torch.Tensor:
    # One seeded subset for every image: a sample's tokens do not depend on its place in the batch.
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(features.shape[1], generator=g)[:k].sort().values  # (K,)
    return features[:, keep.to(features.device)]


def contextual_count(k: int) -> int:
    """VisionZip's split: 10 contextual tokens of 64 (54 dominant), the same share at other budgets."""
    return max(1, round(k * 10 / 64)) if k > 1 else 0


def visionzip(features: torch.Tensor, k: int, *, cls_attention: torch.Tensor | None = None,
              seed: int = 0) -> torch.Tensor:
    if cls_attention is None:
        raise ValueError("visionzip needs the vision tower's CLS attention")
    b, n, d = features.shape
    n_ctx = contextual_count(k)
    n_dom = k - n_ctx
    order = cls_attention.argsort(dim=1, descending=True)  # (B, N)
    dominant = order[:, :n_dom].sort(dim=1).values  # (B, K_dom) in raster order
    rest = order[:, n_dom:].sort(dim=1).values  # (B, N - K_dom)
    out = [features.gather(1, dominant[..., None].expand(-1, -1, d))]
    if n_ctx:
        r = features.gather(1, rest[..., None].expand(-1, -1, d)).float()  # (B, R, D)
        step = r.shape[1] / n_ctx
        targets = (torch.arange(n_ctx, device=r.device) * step).long()  # evenly spread over the rest
        t = r[:, targets]  # (B, C, D)
        sim = F.normalize(r, dim=-1) @ F.normalize(t, dim=-1).transpose(1, 2)  # (B, R, C) cosine
        assign = sim.argmax(-1)  # (B, R): each remaining token's most similar target
        assign[:, targets] = torch.arange(n_ctx, device=r.device)  # a target belongs to itself
        one_hot = F.one_hot(assign, n_ctx).to(r.dtype)  # (B, R, C)
        merged = (one_hot.transpose(1, 2) @ r) / one_hot.sum(1)[..., None]  # (B, C, D) group means
        out.append(merged.to(features.dtype))
    return torch.cat(out, dim=1)


REDUCERS: dict[str, Reducer] = {
    "pool": Reducer(pool, help="average-pool the token grid to sqrt(K) x sqrt(K) (K a perfect square)"),
    "visionzip": Reducer(visionzip, needs_cls_attention=True,
                         help="keep the tokens the vision CLS attends to most, merge the rest into a few"),
    "random": Reducer(random_keep, help="a seeded random subset (the control)"),
}


def reduce(method: str, features: torch.Tensor, k: int, *, cls_attention=None, seed: int = 0) -> torch.Tensor:
    """(B, N, D) -> (B, min(K, N), D) with the named reducer; the identity when K >= N."""
    if method not in REDUCERS:
        raise ValueError(f"token method must be one of {sorted(REDUCERS)}, got {method!r}")
    if k >= features.shape[1]:
        return features
    return REDUCERS[method].fn(features, k, cls_attention=cls_attention, seed=seed)
