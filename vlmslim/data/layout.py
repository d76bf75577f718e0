"""The local dataset layout that every later step reads, and its loader.

```
DIR/
  images/...         image files; samples refer to them by path relative to DIR ("images/x.jpg")
  samples.jsonl      one JSON object per line: id, image, task, question, references, extras
  meta.json          provenance: source id + revision, split, source size, selected indices, seed,
                     counts, skipped items and why, sha256 of samples.jsonl
  annotations.json   caption sets only: the references in COCO format (pycocotools' COCO reads it;
                     image ids are `extras["coco_id"]`)
```

`load(DIR)` is the one entry point for consumers (benchmarks, pruning calibration): it validates the
directory and returns a `LocalDataset`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
from PIL import Image

from vlmslim.errors import DataError
from vlmslim.io import sha256_file  # noqa: F401  (re-exported: writer/importer use it from here)
from vlmslim.prompts import INSTRUCTIONS

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TASK_NAMES = tuple(INSTRUCTIONS)  # "caption", "vqa", "open-vqa": the tasks vlmslim.prompts knows
IMAGES_DIR = "images"
SAMPLES_FILE = "samples.jsonl"
META_FILE = "meta.json"
ANNOTATIONS_FILE = "annotations.json"

# What PIL raises for unreadable image bytes: UnidentifiedImageError and truncation are OSErrors,
# some broken PNG chunks raise SyntaxError, bad headers ValueError, huge images DecompressionBombError.
IMAGE_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

# Single-channel modes wider than 8 bits: PIL's own convert("RGB") clips them at 255 (a 16-bit photo
# turns ~all white) or truncates them (a 0-1 float image turns black), so `to_rgb` scales them.
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def high_bit_scaling(im: Image.Image) -> tuple[np.ndarray, str] | None:
    """(the pixels as uint8 (H, W), how they were scaled) for a `HIGH_BIT_MODES` image, else None.

    16-bit: value >> 8 (the full 0-65535 range onto 0-255). 32-bit int: as is when it fits 0-255, >> 8
    when it fits 16 bits, else its own min-max range. Float: x 255 when it lies in [0, 1] (the usual
    convention), else its own min-max range. Raises ValueError for NaN or infinite pixels.
    """
    if im.mode not in HIGH_BIT_MODES:
        return None
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        return (a.astype(np.uint16) >> 8).astype(np.uint8), "16-bit >> 8"
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{im.mode} image has NaN or infinite pixels; cannot map them to 0-255")
    lo, hi = float(a.min()), float(a.max())
    if im.mode == "I" and lo >= 0 and hi <= 255:
        return a.astype(np.uint8), "32-bit int within 0-255"
    if im.mode == "I" and lo >= 0 and hi <= 65535:
        return (a.astype(np.uint32) >> 8).astype(np.uint8), "32-bit int within 16 bits >> 8"
    if im.mode == "F" and lo >= 0 and hi <= 1:
        return np.round(a * 255).astype(np.uint8), "float in [0, 1] x 255"
    scaled = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
    return np.round(scaled).astype(np.uint8), f"{im.mode} range [{lo:g}, {hi:g}] scaled to 0-255"


def to_rgb(im: Image.Image) -> Image.Image:
    """An RGB copy of `im`; high-bit-depth grayscale is scaled to 8 bits (`high_bit_scaling`), not clipped."""
    scaled = high_bit_scaling(im)
    if scaled is None:
        return im.convert("RGB")
    return Image.fromarray(scaled[0]).convert("RGB")  # (H, W) uint8 -> "L"


@dataclass
class Sample:
    """One evaluation item. `image` is relative to the dataset root; `references` are the gold texts
    (5-7 COCO captions, 10 TextVQA answers, the one VQAonline answer)."""

    id: str
    image: str
    task: str
    question: str | None = None
    references: list[str] = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"sample id must be a non-empty string, got {self.id!r}")
        if self.task not in TASK_NAMES:
            raise ValueError(f"sample {self.id}: task must be one of {TASK_NAMES}, got {self.task!r}")
        path = PurePosixPath(self.image)
        if not self.image or path.is_absolute() or ".." in path.parts:
            raise ValueError(f"sample {self.id}: image must be a relative path inside the dataset, got {self.image!r}")
        if self.task != "caption" and not self.question:
            raise ValueError(f"sample {self.id}: task {self.task!r} needs a question")
        if not isinstance(self.references, list) or not all(isinstance(r, str) for r in self.references):
            raise ValueError(f"sample {self.id}: references must be a list of strings")

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        return cls(**d)


@dataclass
class LocalDataset:
    """A validated dataset directory: `samples` in file order, `meta` as written by the producer."""

    root: Path
    meta: dict
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    @property
    def task(self) -> str:
        tasks = sorted({s.task for s in self.samples})
        if len(tasks) != 1:
            raise DataError(f"{self.root} mixes tasks {tasks}; pick one with the benchmark's --task")
        return tasks[0]

    def image_path(self, sample: Sample) -> Path:
        return self.root / sample.image

    def open_image(self, sample: Sample) -> Image.Image:
        """The sample's image as an RGB PIL image (16-bit and float images scaled to 0-255, see `to_rgb`);
        `DataError` naming the file if it is missing or corrupt."""
        path = self.image_path(sample)
        try:
            with Image.open(path) as im:
                return to_rgb(im)
        except FileNotFoundError as e:
            raise DataError(f"image file missing: {path} (sample {sample.id})") from e
        except IMAGE_DECODE_ERRORS as e:
            raise DataError(f"cannot decode image {path} (sample {sample.id}): {e}") from e

    def select(self, limit: int | None, seed: int = 0) -> "LocalDataset":
        """A seeded random subset (see `select_subset`); the chosen indices are recorded in `meta`."""
        indices = select_subset(len(self.samples), limit, seed)
        meta = dict(self.meta, subset={"limit": limit, "seed": seed, "indices": indices})
        return LocalDataset(self.root, meta, [self.samples[i] for i in indices])


def select_subset(n_total: int, limit: int | None, seed: int = 0) -> list[int]:
    """Indices of a seeded random subset of `range(n_total)`, sorted ascending (source order).

    Not the first N: a seeded permutation is drawn and its first `limit` entries kept, so for one seed
    a smaller subset is contained in a larger one. `limit=None` or `limit >= n_total` keeps everything.
    NumPy's legacy `RandomState` is used because its stream is frozen across NumPy versions (the
    `Generator` API does not promise that), so a recorded (seed, limit) reproduces the same subset.
    """
    if n_total < 0:
        raise ValueError(f"n_total must be >= 0, got {n_total}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (or None for all), got {limit}")
    if limit is None or limit >= n_total:
        return list(range(n_total))
    perm = np.random.RandomState(seed).permutation(n_total)
    return sorted(int(i) for i in perm[:limit])


def coco_annotations(samples: list[Sample]) -> dict:
    """COCO caption-format references; image ids come from `extras["coco_id"]` (set by every producer)."""
    images, annotations = [], []
    for s in samples:
        image_id = s.extras["coco_id"]
        images.append({"id": image_id, "file_name": s.image, "sample_id": s.id})
        for ref in s.references:
            annotations.append({"id": len(annotations), "image_id": image_id, "caption": ref})
    # pycocotools' loadRes copies "images" and some versions read "info"/"licenses": keep all present.
    return {"info": {"description": "vlmslim caption references"}, "licenses": [], "type": "captions",
            "images": images, "annotations": annotations}


def load(path: str | Path, *, check_images: bool = True) -> LocalDataset:
    """Read and validate a dataset directory written by `vlmslim data ...`.

    Raises `DataError` for a missing directory or file, a `samples.jsonl` that no longer matches the
    sha256 recorded in `meta.json`, malformed rows, duplicate ids, an empty set, or (with
    `check_images`) image files that are missing.
    """
    root = Path(path)
    hint = "create it with `vlmslim data download|synthetic|import`"
    if not root.is_dir():
        raise DataError(f"dataset directory not found: {root} ({hint})")
    samples_path, meta_path = root / SAMPLES_FILE, root / META_FILE
    for required in (samples_path, meta_path):
        if not required.is_file():
            raise DataError(f"{root} is not a vlmslim dataset: {required.name} is missing ({hint})")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{meta_path}: not UTF-8 text (byte {e.start}); re-create the dataset") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object (provenance, counts, samples_sha256), "
                        f"got a {type(meta).__name__}; re-create the dataset")
    expected = meta.get("samples_sha256")
    actual = sha256_file(samples_path)
    if expected != actual:
        raise DataError(f"{samples_path} does not match the sha256 in {META_FILE} "
                        f"({actual[:12]}… != {str(expected)[:12]}…): it was modified or truncated; re-create the dataset")
    samples: list[Sample] = []
    with open(samples_path, "rb") as f:  # bytes: a non-UTF-8 row is reported with its line number
        for lineno, raw in enumerate(f, 1):
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise DataError(f"{samples_path}:{lineno}: not UTF-8 text (byte {e.start} of the line)") from e
            except json.JSONDecodeError as e:
                raise DataError(f"{samples_path}:{lineno}: bad sample row ({e})") from e
            if not isinstance(row, dict):
                raise DataError(f"{samples_path}:{lineno}: bad sample row (a JSON {type(row).__name__}, "
                                "not an object)")
            try:
                samples.append(Sample.from_dict(row))
            except (TypeError, ValueError) as e:
                raise DataError(f"{samples_path}:{lineno}: bad sample row ({e})") from e
    if not samples:
        raise DataError(f"{samples_path} has no samples")
    dups = [i for i, n in Counter(s.id for s in samples).items() if n > 1]
    if dups:
        raise DataError(f"{samples_path}: duplicate sample id {dups[0]!r}")
    if check_images:
        missing = sorted({s.image for s in samples if not (root / s.image).is_file()})
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise DataError(f"{root}: {len(missing)} image file(s) missing: {shown}")
    logger.debug("loaded %d samples from %s", len(samples), root)
    return LocalDataset(root, meta, samples)
