"""Pareto frontier of (quality, cost) points: pure, no plotting.

A point is on the frontier when no other point is at least as good on both axes and strictly better on
one. Consequences worth stating because plots and `frontier.json` rely on them:

- exact duplicates do not dominate each other, so both are on the frontier when nothing else beats them;
- a point with equal cost but lower quality (or equal quality but higher cost) is dominated;
- points with a missing or non-finite coordinate (None, NaN, ±inf) are never on the frontier and never
  dominate anything: they are simply excluded.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

Point = tuple[Optional[float], Optional[float]]


def _finite(v: Optional[float]) -> bool:
    return v is not None and math.isfinite(v)


def pareto_front(
    points: Sequence[Point], *, higher_quality: bool = True, lower_cost: bool = True
) -> list[bool]:
    """Return one flag per `(quality, cost)` point: True where it is non-dominated.

    `higher_quality` / `lower_cost` give the direction of "better" on each axis. O(n²), which is fine
    for the tens of checkpoints a sweep produces and keeps the tie rules obvious.
    """
    # Flip signs so that "better" is always larger quality and smaller cost.
    qs = [None if not _finite(q) else (q if higher_quality else -q) for q, _ in points]
    cs = [None if not _finite(c) else (c if lower_cost else -c) for _, c in points]
    valid = [q is not None and c is not None for q, c in zip(qs, cs)]
    flags = []
    for i in range(len(points)):
        if not valid[i]:
            flags.append(False)
            continue
        dominated = any(
            valid[j]
            and qs[j] >= qs[i]
            and cs[j] <= cs[i]
            and (qs[j] > qs[i] or cs[j] < cs[i])
            for j in range(len(points))
            if j != i
        )
        flags.append(not dominated)
    return flags


def frontier_order(points: Sequence[Point], *, lower_cost: bool = True) -> list[int]:
    """Indices of the frontier points sorted from cheapest to most expensive (the step line's order).

    Ties in cost (duplicates) are broken by index so the order is deterministic.
    """
    flags = pareto_front(points, lower_cost=lower_cost)
    sign = 1.0 if lower_cost else -1.0
    return sorted((i for i, f in enumerate(flags) if f), key=lambda i: (sign * points[i][1], i))
