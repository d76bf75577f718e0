"""Selection: pruning ratios + scores -> kept indices (sorted, so kept units keep their order).

Counts are decided first, from shapes alone (`kept_width`, `kept_heads`), so an impossible request
fails before any scoring or surgery, with a message listing the ratios that are possible. Rounding is
to the *nearest* admissible count; a ratio that keeps nothing or removes nothing is refused.
"""

from __future__ import annotations

import math

import torch

from vlmslim.errors import PruningError


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


def _ratios_text(ratios: list[float], requested: float) -> str:
    if len(ratios) <= 10:
        return ", ".join(f"{r:.4g}" for r in ratios)
    below = [r for r in ratios if r <= requested][-1:]  # ratios ascend
    above = [r for r in ratios if r > requested][:1]
    near = ", ".join(f"{r:.4g}" for r in below + above)
    return f"{len(ratios)} values from {ratios[0]:.4g} to {ratios[-1]:.4g}; nearest to {requested:g}: {near}"


def kept_width(n: int, ratio: float, round_to: int = 64, option: str = "--glu") -> int:
    """Neurons kept out of `n` when removing `ratio`: the nearest multiple of `round_to` in (0, n)."""
    if ratio == 0:
        return n
    k = _round_half_up(n * (1 - ratio) / round_to) * round_to
    if 0 < k < n:
        return k
    widths = [m for m in range(round_to, n, round_to)]
    if not widths:
        raise PruningError(f"{option} {ratio:g}: width {n} has no multiple of --round-to {round_to} below it; "
                           "lower --round-to")
    ratios = sorted(1 - m / n for m in widths)
    what = "keeps no neurons" if k <= 0 else "removes no neurons"
    raise PruningError(f"{option} {ratio:g} {what} of width {n} with --round-to {round_to}; "
                       f"possible ratios: {_ratios_text(ratios, ratio)}")


def select_neurons(scores: torch.Tensor, ratio: float, round_to: int = 64) -> torch.Tensor:
    """Sorted indices of the highest-scoring neurons; (I,) scores -> (k,) int64."""
    k = kept_width(scores.numel(), ratio, round_to)
    return top_k_sorted(scores, k)


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    # Stable sort: equal scores (e.g. all-zero rows) keep the lower index, so selection is deterministic.
    order = torch.sort(scores.detach().float().cpu(), descending=True, stable=True).indices
    return order[:k].sort().values


def kept_heads(n_q: int, n_kv: int, ratio: float, mode: str) -> tuple[int, int]:
    """(query heads, KV heads) kept. `groups` removes whole KV groups (each KV head with its query heads);
    `query` removes the same number of query heads inside every group, keeping all KV heads."""
    if n_q % n_kv:
        raise PruningError(f"{n_q} query heads do not split into {n_kv} KV groups")
    per_group = n_q // n_kv
    if ratio == 0:
        return n_q, n_kv
    if mode == "groups":
        g = _round_half_up(n_kv * (1 - ratio))
        if 0 < g < n_kv:
            return g * per_group, g
        unit = f"{n_kv} KV groups of {per_group} query heads" if per_group > 1 else f"{n_kv} heads"
        if n_kv == 1:
            raise PruningError(f"--heads {ratio:g} with --head-mode groups: the model has 1 KV group of {n_q} query "
                               "heads, which cannot be removed; use --head-mode query")
        ratios = [1 - k / n_kv for k in range(n_kv - 1, 0, -1)]
        raise PruningError(f"--heads {ratio:g} with --head-mode groups {'keeps' if g <= 0 else 'removes'} "
                           f"no {'groups' if per_group > 1 else 'heads'} of {unit}; possible ratios: "
                           f"{_ratios_text(ratios, ratio)}")
    if mode == "query":
        if per_group == 1:
            raise PruningError(f"--head-mode query needs >= 2 query heads per KV group, the model has {n_q} heads "
                               f"over {n_kv} KV heads; use --head-mode groups")
        q = _round_half_up(per_group * (1 - ratio))
        if 0 < q < per_group:
            return q * n_kv, n_kv
        ratios = [1 - k / per_group for k in range(per_group - 1, 0, -1)]
        raise PruningError(f"--heads {ratio:g} with --head-mode query {'keeps' if q <= 0 else 'removes'} no query "
                           f"heads of groups of {per_group}; possible ratios: {_ratios_text(ratios, ratio)}")
    raise PruningError(f"unknown head mode {mode!r}")


def select_heads(scores: torch.Tensor, n_kv: int, ratio: float, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept query heads, kept KV heads), sorted. Query head j belongs to KV group j // (H / n_kv)."""
    n_q = scores.numel()
    k_q, k_kv = kept_heads(n_q, n_kv, ratio, mode)
    per_group = n_q // n_kv
    by_group = scores.detach().float().cpu().view(n_kv, per_group)  # (groups, query heads per group)
    if mode == "groups":
        kv = top_k_sorted(by_group.sum(1), k_kv)
        q = (kv[:, None] * per_group + torch.arange(per_group)).flatten()
        return q, kv
    keep_per = k_q // n_kv
    q = torch.cat([g * per_group + top_k_sorted(by_group[g], keep_per) for g in range(n_kv)])
    return q, torch.arange(n_kv)
