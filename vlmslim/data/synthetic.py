"""`vlmslim data synthetic`: the offline shapes-captioning set the embedded demo model learns.

Each scene has 1-3 shapes (circle, square, triangle, diamond) in distinct cells of a 3x3 grid, each
small or large and one of six colours, on a white, gray or black background. Its 5 reference captions
come from 5 templates over one small grammar, so a caption is *determined* by the image:

- shapes are always listed in reading order (top row first, left to right within a row);
- words are lowercase, no punctuation, so `caption.split()` is the tokenisation and `vocabulary()`
  lists every word any caption can use (the demo's word-level tokenizer is built from it).

Determinism: scene i of seed s is drawn from `random.Random("vlmslim-synthetic-v1:s:i")` (string seeds
are hashed with SHA-512, stable across Python versions), images are drawn without anti-aliasing and
saved as PNG with fixed options, and meta.json carries no timestamp: the same (seed, n, size) gives
byte-identical files, and sets with one seed are nested (n=100 is a prefix of n=1000). Different seeds
draw independent scenes — use e.g. seed 0 for training and seed 1 for evaluation. Scenes are random
draws, so an evaluation scene can repeat a training scene's *description* (never its exact pixels
unless everything coincides), as in any compositional benchmark.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from vlmslim.data.layout import Sample
from vlmslim.data.writer import DatasetWriter, check_output

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "shapes-v1"  # bump when scenes, rendering or captions change
SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230),
          "yellow": (240, 210, 40), "purple": (150, 60, 190), "orange": (245, 140, 30)}
BACKGROUNDS = {"white": (255, 255, 255), "gray": (128, 128, 128), "black": (0, 0, 0)}
SIZES = {"small": 0.22, "large": 0.40}  # radius as a fraction of the grid cell
# 3x3 grid, row-major: index = 3 * row + col.
LOCATIONS = ("at the top left", "at the top", "at the top right",
             "on the left", "in the center", "on the right",
             "at the bottom left", "at the bottom", "at the bottom right")
COUNT_WORDS = ("one", "two", "three")
_TEMPLATE_WORDS = ("a", "an", "and", "on", "background", "with", "shape", "shapes")


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    size: str
    cell: int  # 0..8, row-major in the 3x3 grid
    dx: int = 0  # jitter in pixels inside the cell (not described by captions)
    dy: int = 0


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]  # in reading order (sorted by cell)

    def describe(self) -> dict:
        return {"background": self.background,
                "shapes": [{"shape": s.shape, "color": s.color, "size": s.size,
                            "position": LOCATIONS[s.cell].split(" ", 2)[-1]} for s in self.shapes]}


@dataclass
class SyntheticConfig:
    n: int = 1000
    seed: int = 0
    size: int = 64
    min_shapes: int = 1
    max_shapes: int = 3

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n}")
        if self.size < 32:
            raise ValueError(f"--size must be >= 32 pixels (small shapes vanish below), got {self.size}")
        if not 1 <= self.min_shapes <= self.max_shapes <= len(COUNT_WORDS):
            raise ValueError(f"need 1 <= min_shapes <= max_shapes <= {len(COUNT_WORDS)}, "
                             f"got {self.min_shapes}, {self.max_shapes}")


def vocabulary() -> list[str]:
    """Every word a synthetic caption can contain, sorted."""
    words = set(_TEMPLATE_WORDS) | set(COUNT_WORDS) | set(SHAPES) | set(COLORS) | set(BACKGROUNDS) | set(SIZES)
    words |= {w for loc in LOCATIONS for w in loc.split()}
    return sorted(words)


def random_scene(rng: random.Random, min_shapes: int = 1, max_shapes: int = 3, size: int = 64) -> Scene:
    k = rng.randint(min_shapes, max_shapes)
    cells = sorted(rng.sample(range(9), k))
    background = rng.choice(sorted(BACKGROUNDS))
    shapes = []
    for cell in cells:
        shape, color, sz = rng.choice(SHAPES), rng.choice(sorted(COLORS)), rng.choice(sorted(SIZES))
        slack = max(0, int(size / 6 - SIZES[sz] * size / 3) - 1)  # room left in the cell around the shape
        shapes.append(Shape(shape, color, sz, cell, rng.randint(-slack, slack), rng.randint(-slack, slack)))
    return Scene(background, tuple(shapes))


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw the scene; no anti-aliasing, so pixels depend only on the scene and size."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for s in scene.shapes:
        row, col = divmod(s.cell, 3)
        cx, cy, r = (col + 0.5) * cell + s.dx, (row + 0.5) * cell + s.dy, SIZES[s.size] * cell
        fill = COLORS[s.color]
        if s.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif s.shape == "square":
            h = 0.85 * r  # similar area to the circle
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        elif s.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
        elif s.shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)], fill=fill)
        else:
            raise ValueError(f"unknown shape {s.shape!r}")
    return img


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def captions(scene: Scene) -> list[str]:
    """The 5 reference captions of a scene (5 templates, same facts, different word orders)."""
    bg = f"on {_a(scene.background)} background"
    full = [_a(f"{s.size} {s.color} {s.shape}") for s in scene.shapes]
    where = [LOCATIONS[s.cell] for s in scene.shapes]
    k = len(scene.shapes)
    return [
        " and ".join(f"{p} {w}" for p, w in zip(full, where)) + f" {bg}",
        f"{_a(scene.background)} background with " + " and ".join(f"{p} {w}" for p, w in zip(full, where)),
        " and ".join(f"{w} {p}" for p, w in zip(full, where)) + f" {bg}",
        f"{COUNT_WORDS[k - 1]} {'shape' if k == 1 else 'shapes'} {bg} with "
        + " and ".join(f"{p} {w}" for p, w in zip(full, where)),
        " and ".join(_a(f"{s.color} {s.shape}") for s in scene.shapes) + f" {bg}",
    ]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=9)  # fixed options: byte-stable output
    return buf.getvalue()


def make_synthetic(out: str | Path, *, overwrite: bool = False, **options) -> Path:
    """Render a synthetic caption set (options: `SyntheticConfig` fields) into the layout at `out`."""
    cfg = SyntheticConfig(**options)
    out = Path(out)
    logger.info("synthetic %s", asdict(cfg))
    check_output(out, overwrite)
    request = {"dataset": "synthetic", "generator": GENERATOR_VERSION, **asdict(cfg)}
    with DatasetWriter(out, task="caption", request=request, overwrite=overwrite) as writer:
        for i in range(cfg.n):
            scene = random_scene(random.Random(f"vlmslim-synthetic-v1:{cfg.seed}:{i}"),
                                 cfg.min_shapes, cfg.max_shapes, cfg.size)
            sample_id = f"shapes-s{cfg.seed}-{i:05d}"
            image = writer.add_image(sample_id, lambda: _png(render(scene, cfg.size)))
            writer.add(Sample(id=sample_id, image=image, task="caption", references=captions(scene),
                              extras={"coco_id": i, "scene": scene.describe()}))
        meta = {"dataset": "synthetic",
                "source": {"id": "vlmslim.data.synthetic", "kind": "generated", "revision": GENERATOR_VERSION},
                "split": None, "source_total": cfg.n, "seed": cfg.seed, "limit": None, "config": asdict(cfg),
                "vocabulary": vocabulary()}
        return writer.commit(meta)
