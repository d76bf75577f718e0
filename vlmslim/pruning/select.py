"""Selection: pruning ratios + scores -> kept indices (sorted, so kept units keep their order).

Counts are decided first, from shapes alone (`kept_width`, `kept_heads`), so an impossible request
fails before any scoring or surgery, with a message listing the ratios that are possible. Rounding is
to the *nearest* admissible count; a ratio that keeps nothing or removes nothing is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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
    return select_head_counts(scores, n_kv, *kept_heads(scores.numel(), n_kv, ratio, mode), mode)


def select_head_counts(scores: torch.Tensor, n_kv: int, k_q: int, k_kv: int,
                       mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`select_heads` for counts already decided (k_q query heads, k_kv KV heads; see `kept_heads`)."""
    n_q = scores.numel()
    per_group = n_q // n_kv
    by_group = scores.detach().float().cpu().view(n_kv, per_group)  # (groups, query heads per group)
    if mode == "groups":
        kv = top_k_sorted(by_group.sum(1), k_kv)
        q = (kv[:, None] * per_group + torch.arange(per_group)).flatten()
        return q, kv
    keep_per = k_q // n_kv
    q = torch.cat([g * per_group + top_k_sorted(by_group[g], keep_per) for g in range(n_kv)])
    return q, torch.arange(n_kv)


# ---------------------------------------------------------------- allocation: one budget across layers
# A component's units: GLU neurons, KV groups (--head-mode groups) or query-head slots per group (query:
# one slot = one query head in every group). `--glu R` / `--heads R` fix the global budget as the number
# of units the uniform allocation keeps (so uniform and non-uniform runs of one R have the same
# parameter count); an allocation only moves units between layers, within --max-layer-ratio.


@dataclass(frozen=True)
class Allocation:
    # (per-layer scores (L,), c) -> removal ratios (L,) before clipping, non-decreasing in c; None = uniform
    profile: Callable[[torch.Tensor, float], torch.Tensor] | None
    needs: str | None  # what prune measures first: "sensitivity" (masked loss) or "outliers" (activations)
    help: str


OWL_LAMBDA = 0.08  # OWL's spread: layer ratios within +-lambda of the mean ratio (paper default)


def _sensitivity_profile(delta: torch.Tensor, c: float) -> torch.Tensor:
    # removal inversely proportional to the loss increase; a layer whose pruning costs nothing (<= 0)
    # counts as very cheap rather than dividing by zero
    positive = delta[delta > 0]
    floor = float(positive.min()) * 1e-3 if positive.numel() else 1e-12
    return c / delta.double().clamp(min=floor)


def _owl_profile(outliers: torch.Tensor, c: float) -> torch.Tensor:
    # OWL: removal = R - (D~ - mean D~) with D~ the outlier ratios scaled to [0, 2 lambda]; c plays R
    d = outliers.double()
    span = float(d.max() - d.min())
    scaled = (d - d.min()) / span * 2 * OWL_LAMBDA if span > 0 else torch.zeros_like(d)
    return c - (scaled - scaled.mean())


ALLOCATIONS: dict[str, Allocation] = {
    "uniform": Allocation(None, None, "every layer loses the same fraction (rounded per layer)"),
    "sensitivity": Allocation(_sensitivity_profile, "sensitivity",
                              "layers lose units inversely to their loss increase when pruned alone at the ratio"),
    "owl": Allocation(_owl_profile, "outliers",
                      "OWL: layers with more activation outliers (Wanda scores > 5x mean) keep more, +-0.08"),
}


def cap_floor(n: int, cap: float) -> float:
    """The fewest units a layer of `n` may keep under --max-layer-ratio `cap`."""
    return n * (1 - cap) - 1e-9


def neuron_levels(n: int, round_to: int, cap: float) -> list[int]:
    """Admissible kept widths of one GLU layer: multiples of round_to in [n (1 - cap), n), and n itself."""
    lo = max(1, math.ceil(cap_floor(n, cap) / round_to))
    return [k * round_to for k in range(lo, n // round_to + 1) if k * round_to < n] + [n]


def unit_levels(n: int, cap: float) -> list[int]:
    """Admissible kept counts of whole units (heads / groups): [n (1 - cap), n], at least 1."""
    return list(range(max(1, math.ceil(cap_floor(n, cap))), n + 1))


def _fit(profile: Callable[[float], torch.Tensor], sizes: torch.Tensor, removed: float) -> torch.Tensor:
    """Removal ratios profile(c) with sum(sizes * ratios) == removed: c by bracketing + bisection."""
    total = lambda c: float((sizes * profile(c)).sum())  # noqa: E731  non-decreasing in c
    lo, hi = -1.0, 1.0
    for _ in range(200):
        if total(lo) <= removed:
            break
        lo *= 2
    for _ in range(200):
        if total(hi) >= removed:
            break
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < removed else (lo, mid)
    return profile((lo + hi) / 2)


def round_to_levels(levels: list[list[int]], targets: list[float], budget: int) -> list[int]:
    """One admissible count per layer, nearest to its real target, with the total as close to `budget`
    as the levels allow (exact when all steps are equal and the budget is reachable)."""
    idx = [min(range(len(lv)), key=lambda j: (abs(lv[j] - t), j)) for lv, t in zip(levels, targets)]
    value = lambda i, j: levels[i][j]  # noqa: E731
    while True:
        total = sum(value(i, j) for i, j in enumerate(idx))
        if total == budget:
            break
        step = 1 if total < budget else -1
        moves = [(abs(value(i, j + step) - targets[i]) - abs(value(i, j) - targets[i]), i)
                 for i, j in enumerate(idx) if 0 <= j + step < len(levels[i])]
        if not moves:
            break
        cost, i = min(moves)
        new_total = total - value(i, idx[i]) + value(i, idx[i] + step)
        if abs(new_total - budget) >= abs(total - budget):
            break
        idx[i] += step
    return [value(i, j) for i, j in enumerate(idx)]


def allocate(name: str, layer_scores: torch.Tensor, sizes: list[int], levels: list[list[int]], budget: int,
             cap: float, option: str = "--glu") -> list[int]:
    """Kept units per layer under allocation `name`: the removal profile fitted to the budget (ratios clipped
    to [0, cap]), then rounded to each layer's admissible `levels`. `layer_scores` (L,) are the allocation's
    per-layer measurements (loss increases, outlier ratios)."""
    floor = sum(lv[0] for lv in levels)
    if floor > budget:
        raise PruningError(f"{option} with --max-layer-ratio {cap:g}: every layer must keep at least its share "
                           f"({floor} units in all) but the budget keeps {budget}; raise --max-layer-ratio")
    profile = ALLOCATIONS[name].profile
    n = torch.tensor(sizes, dtype=torch.float64)
    ratios = _fit(lambda c: profile(layer_scores, c).clamp(0, cap), n, float(n.sum()) - budget)
    return round_to_levels(levels, (n * (1 - ratios)).tolist(), budget)
