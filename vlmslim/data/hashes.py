"""Image identity by content, not by id: what recovery trained on and what a benchmark may score.

Ids are no identity: synthetic sets of different seeds reuse `shapes-s{seed}-{i}` patterns, a COCO
image can come under its file name or its integer id, and one picture may be stored as PNG in one set
and re-encoded in another. The hash is over the *decoded* RGB pixels (and their size), so the same
picture matches however it was written. 16 hex digits (64 bits) keep a manifest that lists thousands of
them small; a chance collision among 10^5 images has probability ~3e-10.
"""

from __future__ import annotations

import hashlib

from PIL import Image

from vlmslim.data.layout import LocalDataset
from vlmslim.errors import DataError

HASH_CHARS = 16
TRAINED_ON = "trained_on"  # the manifest step key a training step (recover) records its data under


def image_content_hash(image: Image.Image) -> str:
    """sha256 (first 16 hex digits) of the RGB pixels and the size of a decoded image."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()[:HASH_CHARS]


def dataset_image_hashes(dataset: LocalDataset) -> list[str]:
    """The content hash of every sample's image, in sample order (an image shared by samples repeats)."""
    cache: dict[str, str] = {}
    out = []
    for s in dataset.samples:
        if s.image not in cache:
            cache[s.image] = image_content_hash(dataset.open_image(s))
        out.append(cache[s.image])
    return out


def content_sha256(hashes: list[str], texts: list[str] | None = None) -> str:
    """One hash of a dataset's content: its image hashes (and instructions) in order, ids ignored."""
    h = hashlib.sha256()
    for i, ih in enumerate(hashes):
        h.update(ih.encode())
        h.update(b"\0" + (texts[i].encode() if texts is not None else b"") + b"\n")
    return h.hexdigest()


def overlap(hashes: list[str], dataset: LocalDataset, dataset_hashes: list[str] | None = None) -> list[str]:
    """Ids of the samples of `dataset` whose image is among `hashes`."""
    known = set(hashes)
    dataset_hashes = dataset_image_hashes(dataset) if dataset_hashes is None else dataset_hashes
    return [s.id for s, h in zip(dataset.samples, dataset_hashes) if h in known]


def trained_on_hashes(manifest: dict | None) -> dict[int, list[str]]:
    """{step index: image hashes} of the steps of a checkpoint's manifest that trained on data."""
    if not manifest:
        return {}
    return {i: s[TRAINED_ON]["image_hashes"] for i, s in enumerate(manifest.get("steps") or [])
            if isinstance(s.get(TRAINED_ON), dict) and s[TRAINED_ON].get("image_hashes")}


def check_disjoint(dataset: LocalDataset, manifest: dict | None, model: str = "the model") -> None:
    """DataError when an image of `dataset` is one a step of `manifest` trained on (compared by content):
    scores on training images say nothing about the held-out quality."""
    trained = trained_on_hashes(manifest)
    if not trained:
        return
    hashes = dataset_image_hashes(dataset)
    for i, known in trained.items():
        shared = overlap(known, dataset, hashes)
        if shared:
            step = manifest["steps"][i]
            raise DataError(
                f"{len(shared)} of the {len(dataset)} images of {dataset.root} are in the data {model} was "
                f"trained on by step {i + 1} ({step.get('kind')}: {step[TRAINED_ON].get('dir')}), e.g. sample "
                f"{shared[0]!r} (compared by image content); benchmark on held-out images")
