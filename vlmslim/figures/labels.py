"""Point labels that do not collide: a greedy placer in display (pixel) coordinates.

Labels are placed one at a time, important ones first. Each tries 16 directions around its point at
growing distances and takes the cheapest candidate, compared as (hard overlap, soft penalty):

- hard: overlap with an already placed label (kept `gap` px apart, so two names never read as one),
  with any point's marker, or running outside the axes;
- soft: overlap with thin obstacles (CI bars, the frontier line), sitting nearer another point than its
  own (ambiguous), a leader line crossing another marker or label, and the distance from the point.

A label far from its point, or nearer another point than its own, gets a thin leader line. Deterministic
and matplotlib-free, so it is tested on plain numbers; plots.py feeds it renderer-measured sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, y up (matplotlib display coords)

# 16 unit directions, right of the point first (reads most naturally), then above/below, then left.
_ANGLES = (0, 22.5, -22.5, 45, -45, 67.5, -67.5, 90, -90, 112.5, -112.5, 135, -135, 157.5, -157.5, 180)
_DIRECTIONS = tuple((math.cos(math.radians(a)), math.sin(math.radians(a))) for a in _ANGLES)

# Soft penalties, in pixels of extra distance: an ambiguous spot is worth going 60 px further out.
AMBIGUOUS_PX = 60.0
LEADER_CROSSING_PX = 40.0
# A label reads as its own point's when it is this much nearer (px, marker edge to label box) to it than
# to any other marker; otherwise it needs a leader line at least MIN_LEADER_PX long to be visible.
CLEAR_MARGIN_PX = 8.0
MIN_LEADER_PX = 8.0


@dataclass(frozen=True)
class Placement:
    dx: float  # offset of the label's lower-left corner from its anchor, pixels
    dy: float
    leader: bool  # far from its point or nearer another one: needs a connecting line
    overlap: float  # hard overlap (px²) with labels, markers or the outside; 0 when collision-free


def _overlap(a: Rect, b: Rect) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _outside(r: Rect, bounds: Optional[Rect]) -> float:
    if bounds is None:
        return 0.0
    return (r[2] - r[0]) * (r[3] - r[1]) - _overlap(r, bounds)


def _grow(r: Rect, by: float) -> Rect:
    return (r[0] - by, r[1] - by, r[2] + by, r[3] + by)


def _distance(r: Rect, p: tuple[float, float]) -> float:
    """Distance from point p to rectangle r (0 inside)."""
    dx = max(r[0] - p[0], 0.0, p[0] - r[2])
    dy = max(r[1] - p[1], 0.0, p[1] - r[3])
    return math.hypot(dx, dy)


def _nearest_on(r: Rect, p: tuple[float, float]) -> tuple[float, float]:
    return (min(max(p[0], r[0]), r[2]), min(max(p[1], r[1]), r[3]))


def segment_hits(p0: tuple[float, float], p1: tuple[float, float], r: Rect) -> bool:
    """Does the segment p0→p1 pass through the inside of r? (Liang-Barsky clipping.)"""
    t0, t1 = 0.0, 1.0
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    for p, q in ((-dx, p0[0] - r[0]), (dx, r[2] - p0[0]), (-dy, p0[1] - r[1]), (dy, r[3] - p0[1])):
        if p == 0:
            if q <= 0:
                return False
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 >= t1:
            return False
    return True


def _candidate(anchor: tuple[float, float], size: tuple[float, float], direction, distance: float) -> tuple[float, float]:
    """Lower-left offset of a label whose near edge is `distance` px from the anchor in `direction`:
    clearly right (left) of the point the label starts (ends) there, above/below it is centred."""
    (w, h), (ux, uy) = size, direction
    x, y = distance * ux, distance * uy
    dx = x if ux > 0.3 else x - w if ux < -0.3 else x - w / 2
    dy = y if uy > 0.3 else y - h if uy < -0.3 else y - h / 2
    return dx, dy


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    *,
    marker_radii: Optional[Sequence[float]] = None,
    obstacles: Sequence[Rect] = (),
    bounds: Optional[Rect] = None,
    radii: Sequence[float] = (4, 8, 14, 22, 32, 46, 64, 88),
    gap: float = 3.0,
    leader_px: float = 20.0,
) -> list[Placement]:
    """Place one label (width, height) per anchor; earlier anchors get the better spots.

    `marker_radii` (px, per anchor; default 4) are hard obstacles around every anchor, and a label
    starts at its own marker's edge; `obstacles` are soft (CI bars, lines); `bounds` is the axes box;
    `radii` the distances tried beyond the marker edge. Labels further than `leader_px` from their
    marker, or nearer another anchor than their own, are flagged for a leader line."""
    marker_radii = list(marker_radii) if marker_radii is not None else [4.0] * len(anchors)
    markers = [(x - r, y - r, x + r, y + r) for (x, y), r in zip(anchors, marker_radii)]
    placed: list[Rect] = []
    out = []
    for i, (anchor, size) in enumerate(zip(anchors, sizes)):
        best: Optional[tuple[tuple[float, float], Placement, Rect]] = None
        for radius in radii:
            for k, direction in enumerate(_DIRECTIONS):
                dx, dy = _candidate(anchor, size, direction, marker_radii[i] + radius)
                rect = (anchor[0] + dx, anchor[1] + dy, anchor[0] + dx + size[0], anchor[1] + dy + size[1])
                cost = _cost(i, rect, radius + 0.5 * k, anchors, markers, placed, obstacles, bounds, gap, leader_px)
                if best is None or cost[0] < best[0]:
                    best = (cost[0], Placement(dx, dy, cost[1], cost[0][0]), rect)
        assert best is not None  # radii and _DIRECTIONS are non-empty
        placed.append(best[2])
        out.append(best[1])
    return out


def _cost(i, rect, distance, anchors, markers, placed, obstacles, bounds, gap, leader_px) -> tuple[tuple[float, float], bool]:
    """((hard px², soft penalty), needs a leader) of label i at `rect`."""
    hard = sum(_overlap(_grow(rect, gap), p) for p in placed) + sum(_overlap(rect, m) for m in markers)
    hard += _outside(rect, bounds)
    soft = sum(_overlap(rect, o) for o in obstacles) + distance
    # Gaps between the label box and each marker's edge.
    gaps = [_distance(rect, a) - (m[2] - m[0]) / 2 for a, m in zip(anchors, markers)]
    own = gaps[i]
    ambiguous = any(g < own + CLEAR_MARGIN_PX for j, g in enumerate(gaps) if j != i)
    leader = ambiguous or own > leader_px
    if ambiguous:  # a leader line tells the reader whose label it is, if it is long enough to see
        soft += AMBIGUOUS_PX * (1 if own >= MIN_LEADER_PX else 3)
    if leader:  # the line from the label's nearest edge point to its marker should cross nothing
        start = _nearest_on(rect, anchors[i])
        crossings = sum(segment_hits(start, anchors[i], m) for j, m in enumerate(markers) if j != i)
        crossings += sum(segment_hits(start, anchors[i], _grow(p, -1.0)) for p in placed)
        soft += LEADER_CROSSING_PX * crossings
    return (hard, soft), leader
