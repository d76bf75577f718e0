"""Point labels that do not collide: a greedy placer in display (pixel) coordinates.

Each label tries eight positions around its point at growing distances and takes the first that
overlaps no placed label, no marker/error bar and stays inside the axes; if none is free it takes the
least-overlapping one. Labels moved away from their point get a thin leader line. Deterministic and
dependency-free, so it is tested without matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, y up (matplotlib display coords)

# Unit directions in preference order: right of the point reads most naturally, then above/below.
_DIRECTIONS = ((1, 0.0), (0.75, 0.75), (0.75, -0.75), (-1, 0.0), (-0.75, 0.75), (-0.75, -0.75), (0, 1), (0, -1))


@dataclass(frozen=True)
class Placement:
    dx: float  # offset of the label's lower-left corner from its anchor, pixels
    dy: float
    leader: bool  # far enough from the point to need a connecting line
    overlap: float  # 0 when the label is collision-free


def _overlap(a: Rect, b: Rect) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _outside(r: Rect, bounds: Optional[Rect]) -> float:
    if bounds is None:
        return 0.0
    area = (r[2] - r[0]) * (r[3] - r[1])
    return area - _overlap(r, bounds)


def _candidate(anchor: tuple[float, float], size: tuple[float, float], direction, radius: float) -> tuple[float, float]:
    """Lower-left offset putting the label's near edge `radius` px from the anchor in `direction`."""
    (w, h), (ux, uy) = size, direction
    dx = radius * ux if ux > 0 else (-radius * -ux - w if ux < 0 else -w / 2)
    dy = radius * uy if uy > 0 else (-radius * -uy - h if uy < 0 else -h / 2)
    return dx, dy


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    *,
    obstacles: Sequence[Rect] = (),
    bounds: Optional[Rect] = None,
    radii: Sequence[float] = (7, 16, 28, 44, 64),
    pad: float = 1.5,
    leader_px: float = 20.0,
    clearances: Optional[Sequence[float]] = None,
) -> list[Placement]:
    """Place one label (width, height) per anchor; earlier anchors get the better spots. Labels further
    than `leader_px` from their point are flagged for a leader line. `clearances` (per anchor, pixels)
    push every candidate out by that much, for big markers such as the baseline star."""
    placed: list[Rect] = []
    out = []
    clearances = clearances if clearances is not None else [0.0] * len(anchors)
    for anchor, size, clearance in zip(anchors, sizes, clearances):
        best: Optional[tuple[float, Placement, Rect]] = None
        for radius in radii:
            for direction in _DIRECTIONS:
                dx, dy = _candidate(anchor, size, direction, radius + clearance)
                rect = (anchor[0] + dx - pad, anchor[1] + dy - pad, anchor[0] + dx + size[0] + pad, anchor[1] + dy + size[1] + pad)
                cost = sum(_overlap(rect, o) for o in placed) + sum(_overlap(rect, o) for o in obstacles)
                # Leaving the axes is worse than overlapping: the label would be clipped or hit the legend.
                cost += 4 * _outside(rect, bounds)
                if best is None or cost < best[0]:
                    best = (cost, Placement(dx, dy, radius > leader_px, cost), rect)
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None  # radii and _DIRECTIONS are non-empty
        placed.append(best[2])
        out.append(best[1])
    return out


def marker_rect(x: float, y: float, radius: float) -> Rect:
    return (x - radius, y - radius, x + radius, y + radius)
