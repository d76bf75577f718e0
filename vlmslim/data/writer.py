"""Atomic, resumable writing of a dataset directory, shared by download, import and synthetic.

A dataset is built in a stable staging directory `<out>.partial/` and renamed to `<out>` only when
`samples.jsonl`, `meta.json` (and `annotations.json`) are complete, so `<out>` never exists half
written. The staging directory deliberately has no pid in its name (unlike checkpoint writes): an
interrupted download leaves its verified images there and a re-run of the same request reuses them
instead of fetching them again. `.request.json` records what the staged images came from (a different
source wipes them); `.lock` holds the writer's pid so two concurrent runs cannot share it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from PIL import Image, UnidentifiedImageError

from vlmslim import __version__
from vlmslim.data.layout import (
    ANNOTATIONS_FILE, FORMAT_VERSION, IMAGE_DECODE_ERRORS, IMAGES_DIR, META_FILE, SAMPLES_FILE, Sample,
    coco_annotations, high_bit_scaling, sha256_file,
)
from vlmslim.errors import DataError, OutputExistsError
from vlmslim.io import pid_alive

logger = logging.getLogger(__name__)

_REQUEST_FILE, _LOCK_FILE, _TMP_PREFIX = ".request.json", ".lock", ".tmp-"
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
_SAFE = re.compile(r"[^A-Za-z0-9._/-]")


class UnreadableImageError(DataError):
    """A missing image or bytes that PIL cannot decode; producers skip the item and record why."""


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty `out` unless `overwrite` (an empty directory is fine)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it")


def staging_dir(out: Path) -> Path:
    out = out.absolute()  # "." still gets a sibling, not a child
    return out.with_name(out.name + ".partial")


def verify_image(data: bytes, name: str = "") -> str:
    """Fully decode `data` (verify() alone misses truncation) and return the file extension to use.

    16-bit and float images are kept as given; readers scale them to 8 bits (`layout.to_rgb`), which is
    logged here once per image. Ones that cannot be scaled (NaN pixels) are unusable.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt = im.format or "PNG"
            try:
                scaled = high_bit_scaling(im)
            except ValueError as e:
                raise UnreadableImageError(f"unusable image: {e}") from e
    except IMAGE_DECODE_ERRORS as e:
        # PIL's "cannot identify image file <BytesIO at 0x…>" would put a memory address in meta.json.
        why = "not a recognised image format" if isinstance(e, UnidentifiedImageError) else str(e)
        raise UnreadableImageError(f"corrupt image: {why}") from e
    if scaled is not None:
        logger.info("%s: %s pixels, read as 8-bit (%s)", name or "image", im.mode, scaled[1])
    return _EXTENSIONS.get(fmt, "." + fmt.lower())


def image_key(name: str) -> str:
    """A safe relative file stem for a source image name ("COCO_val/0001.jpg" -> "COCO_val/0001").

    Unsafe characters are replaced and a short hash of the original appended, so two different names
    can never collapse onto one file (the mapping must not depend on processing order: resume).
    """
    stem = str(name).strip().replace("\\", "/")
    stem = re.sub(r"\.(jpe?g|png|gif|webp|bmp|tiff?)$", "", stem, flags=re.IGNORECASE)
    parts = [p for p in stem.split("/") if p not in ("", ".", "..")]
    safe = _SAFE.sub("_", "/".join(parts)) or "image"
    if safe != stem:
        safe += "-" + hashlib.sha1(str(name).encode()).hexdigest()[:8]
    return safe


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(_TMP_PREFIX + path.name)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


class DatasetWriter:
    """Context manager: stage images and samples, then `commit(meta)` renames staging to `out`.

    `request` identifies where staged images come from; a staging dir left by a different request is
    wiped rather than reused. On an error before commit the staging dir is kept (for resume) if it holds
    images, else removed.
    """

    def __init__(self, out: str | Path, *, task: str, request: dict, overwrite: bool = False):
        self.out = Path(out).absolute()  # "." has no name to rename or put a sibling next to
        self.task = task
        self.request = request
        self.overwrite = overwrite
        self.staging = staging_dir(self.out)
        self.samples: list[Sample] = []
        self.skipped: list[dict] = []
        self._images: dict[str, str] = {}  # key -> "images/<key><ext>"
        self._bad: dict[str, str] = {}  # key -> why it is unusable
        self._done = False

    def __enter__(self) -> "DatasetWriter":
        check_output(self.out, self.overwrite)
        self.staging.mkdir(parents=True, exist_ok=True)
        self._lock()
        req_path = self.staging / _REQUEST_FILE
        if req_path.is_file() and req_path.read_bytes() != _json_bytes(self.request):
            logger.warning("%s was staged for another request; starting over", self.staging)
            shutil.rmtree(self.staging / IMAGES_DIR, ignore_errors=True)
        _write_atomic(req_path, _json_bytes(self.request))
        images = self.staging / IMAGES_DIR
        images.mkdir(exist_ok=True)
        for p in images.rglob("*"):
            if p.is_file() and not p.name.startswith(_TMP_PREFIX):
                rel = p.relative_to(self.staging).as_posix()
                self._images[p.relative_to(images).with_suffix("").as_posix()] = rel
        if self._images:
            logger.info("resuming: %d images already staged in %s", len(self._images), self.staging)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._done:
            return False
        (self.staging / _LOCK_FILE).unlink(missing_ok=True)
        if not any(p.is_file() for p in (self.staging / IMAGES_DIR).rglob("*")):
            shutil.rmtree(self.staging, ignore_errors=True)  # nothing worth resuming
        else:
            logger.warning("interrupted: staged images kept in %s; re-run the same command to resume", self.staging)
        return False

    def _lock(self) -> None:
        lock = self.staging / _LOCK_FILE
        if lock.is_file():
            text = lock.read_text().strip()
            pid = int(text) if text.isdigit() else -1
            if pid > 0 and pid != os.getpid() and pid_alive(pid):
                raise DataError(f"another vlmslim run (pid {pid}) is writing {self.staging}; wait for it or stop it")
        lock.write_text(str(os.getpid()))

    def add_image(self, name: str, read: Callable[[], bytes]) -> str:
        """Stage the image known to the source as `name` and return its layout path.

        Already staged (earlier sample, or an interrupted run) -> not read again. Raises
        `UnreadableImageError` if `read` finds no file or the bytes do not decode.
        """
        key = image_key(name)
        if key in self._images:
            return self._images[key]
        if key in self._bad:  # several questions share one broken image: decide once
            raise UnreadableImageError(self._bad[key])
        try:
            data = read()
            ext = verify_image(data, name)
        except UnreadableImageError as e:
            self._bad[key] = str(e)
            raise
        except FileNotFoundError as e:
            self._bad[key] = f"image file missing: {e}"
            raise UnreadableImageError(self._bad[key]) from e
        path = self.staging / IMAGES_DIR / (key + ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, data)
        self._images[key] = path.relative_to(self.staging).as_posix()
        return self._images[key]

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    def skip(self, index: int | None, sample_id: str | None, image: str | None, reason: str) -> None:
        logger.warning("skipping %s (image %s): %s", sample_id, image, reason)
        self.skipped.append({"index": index, "id": sample_id, "image": image, "reason": reason})

    def commit(self, meta: dict) -> Path:
        """Write samples.jsonl, annotations.json (captions), meta.json; rename staging to `out`."""
        if not self.samples:
            why = f"; all {len(self.skipped)} items were skipped, first: {self.skipped[0]['reason']}" if self.skipped else ""
            shutil.rmtree(self.staging / IMAGES_DIR, ignore_errors=True)  # nothing worth resuming
            raise DataError(f"no samples to write to {self.out}{why}")
        used = {s.image for s in self.samples}
        for rel in set(self._images.values()) - used:  # staged by an earlier, different subset
            (self.staging / rel).unlink(missing_ok=True)
        samples_path = self.staging / SAMPLES_FILE
        _write_atomic(samples_path, "".join(s.to_json() + "\n" for s in self.samples).encode("utf-8"))
        full = {"format_version": FORMAT_VERSION, "task": self.task, **meta,
                "counts": {"samples": len(self.samples), "images": len(used), "skipped": len(self.skipped)},
                "skipped": self.skipped, "samples_sha256": sha256_file(samples_path)}
        if self.task == "caption":
            _write_atomic(self.staging / ANNOTATIONS_FILE, _json_bytes(coco_annotations(self.samples)))
            full["annotations_sha256"] = sha256_file(self.staging / ANNOTATIONS_FILE)
        full["vlmslim_version"] = __version__
        _write_atomic(self.staging / META_FILE, _json_bytes(full))
        (self.staging / _REQUEST_FILE).unlink(missing_ok=True)
        (self.staging / _LOCK_FILE).unlink(missing_ok=True)
        self._rename_into_place()
        self._done = True
        logger.info("wrote %d samples (%d skipped) to %s", len(self.samples), len(self.skipped), self.out)
        return self.out

    def _rename_into_place(self) -> None:
        check_output(self.out, self.overwrite)  # something may have appeared while we worked
        old = None
        if self.out.is_dir():
            # Move the old dataset aside first so `out` is never a mix of old and new files.
            old = self.out.with_name(f"{self.out.name}.old-{os.getpid()}")
            os.rename(self.out, old)
        os.rename(self.staging, self.out)
        if old is not None:
            shutil.rmtree(old)
