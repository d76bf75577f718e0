"""A minimal reader of the local dataset layout, until `vlmslim.data` lands on this branch.

TODO(merge): use vlmslim.data.load (and LocalDataset.select for --limit); delete this file. It reads the
same layout (DIR/images/…, DIR/samples.jsonl, DIR/meta.json) and exposes the same attributes the
benchmark uses: `.root`, `.meta`, `.samples`, `.open_image(sample)`, `.select(limit, seed)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vlmslim.errors import DataError

# What PIL raises for unreadable bytes: truncation/unidentified are OSErrors, some broken chunks SyntaxError.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class Sample:
    id: str
    image: str
    task: str
    question: str | None = None
    references: list[str] = field(default_factory=list)
    extras: dict = field(default_factory=dict)


@dataclass
class LocalDataset:
    root: Path
    meta: dict
    samples: list[Sample]

    def open_image(self, sample: Sample) -> Image.Image:
        path = self.root / sample.image
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError as e:
            raise DataError(f"image file missing: {path} (sample {sample.id})") from e
        except _DECODE_ERRORS as e:
            raise DataError(f"cannot decode image {path} (sample {sample.id}): {e}") from e

    def select(self, limit: int | None, seed: int = 0) -> "LocalDataset":
        # Same rule as vlmslim.data.select_subset: a seeded permutation's first `limit` entries, in source
        # order, so a smaller subset is contained in a larger one (growing --limit resumes cleanly).
        n = len(self.samples)
        if limit is None or limit >= n:
            return self
        keep = sorted(int(i) for i in np.random.RandomState(seed).permutation(n)[:limit])
        return LocalDataset(self.root, dict(self.meta, subset={"limit": limit, "seed": seed}),
                            [self.samples[i] for i in keep])


def load(path) -> LocalDataset:
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"dataset directory not found: {root} (create it with `vlmslim data ...`)")
    samples_path = root / "samples.jsonl"
    if not samples_path.is_file():
        raise DataError(f"{root} is not a vlmslim dataset: samples.jsonl is missing")
    meta_path = root / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    samples = []
    with open(samples_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                samples.append(Sample(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as e:
                raise DataError(f"{samples_path}:{lineno}: bad sample row ({e})") from e
    if not samples:
        raise DataError(f"{samples_path} has no samples")
    return LocalDataset(root, meta, samples)
