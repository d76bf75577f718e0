"""`vlmslim data import`: a user's own images + captions -> the local layout (a caption set).

Captions come as COCO-style json (`images` with id/file_name, `annotations` with image_id/caption) or
a CSV with an `image` (or `file_name`) and a `caption` column; several rows or annotations per image
become several references. File names are relative to IMAGES_DIR.

Policy: an image named by the captions but absent from IMAGES_DIR is an error that names it (the user
can fix the list; silently evaluating on fewer images would mislead). So are, before anything is
written: a name that leaves IMAGES_DIR (absolute, or climbing out with ".."; symlinks inside IMAGES_DIR
are the user's own and are followed), two names that would become one sample or one stored image
("dup.png" and "dup.jpg"), and a caption file that is not UTF-8 (a byte-order mark is fine). An image
that exists but does not decode is skipped and recorded in meta.json, as `download` does. Images
without any caption are left out (and recorded).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath

from vlmslim.data.layout import Sample, sha256_file
from vlmslim.data.writer import DatasetWriter, UnreadableImageError, check_output, image_key
from vlmslim.errors import DataError

logger = logging.getLogger(__name__)


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8, with or without a byte-order mark (Excel writes one)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x}); save the file as UTF-8 "
                        "(e.g. `iconv -f latin1 -t utf-8`)") from e


def _read_coco_json(path: Path) -> list[tuple[object, str, list[str]]]:
    """[(image id, file_name, captions)] in the file's image order."""
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("annotations"), list):
        raise DataError(f"{path}: expected COCO captions json with 'images' and 'annotations' lists")
    try:
        ids = [img["id"] for img in doc["images"]]
        names = {img["id"]: str(img["file_name"]) for img in doc["images"]}
        if len(names) < len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DataError(f"{path}: image id {dup!r} appears {ids.count(dup)} times in 'images'")
        caps: dict[object, list[str]] = {i: [] for i in names}
        for ann in doc["annotations"]:
            if ann["image_id"] not in caps:
                raise DataError(f"{path}: annotation {ann.get('id')} refers to unknown image_id {ann['image_id']!r}")
            caps[ann["image_id"]].append(str(ann["caption"]).strip())
    except (KeyError, TypeError) as e:
        raise DataError(f"{path}: image or annotation entry without {e} (need images[].id/file_name, "
                        "annotations[].image_id/caption)") from e
    return [(i, names[i], caps[i]) for i in names]


def _read_csv(path: Path) -> list[tuple[object, str, list[str]]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    cols = reader.fieldnames or []
    image_col = next((c for c in ("image", "file_name") if c in cols), None)
    if image_col is None or "caption" not in cols:
        raise DataError(f"{path}: CSV needs an 'image' (or 'file_name') and a 'caption' column, has {cols}")
    caps: dict[str, list[str]] = {}  # insertion order = first appearance
    for row in reader:
        name = (row[image_col] or "").strip()
        if name:
            caps.setdefault(name, []).append((row["caption"] or "").strip())
    return [(None, name, c) for name, c in caps.items()]


_READERS = {".json": _read_coco_json, ".csv": _read_csv}


def _sample_id(image_id, name: str) -> str:
    return str(image_id) if image_id is not None else Path(name).with_suffix("").as_posix()


def _leaves_dir(name: str) -> bool:
    """True for a name that is not a path inside IMAGES_DIR: absolute, or climbing out with "..". Checked
    on the text, before any file is touched."""
    path = name.replace("\\", "/")
    if PurePosixPath(path).is_absolute() or PureWindowsPath(name).drive:
        return True
    return posixpath.normpath(path).split("/")[0] == ".."


def _check_names(entries: list[tuple[object, str, list[str]]], captions: Path, images_dir: Path) -> None:
    """Refuse names outside IMAGES_DIR and names that would share one sample id or one stored image."""
    outside = [name for _, name, _ in entries if _leaves_dir(name)]
    if outside:
        shown = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
        raise DataError(f"{captions.name} names {len(outside)} image path(s) outside {images_dir}: {shown} "
                        "(names must be relative paths inside IMAGES_DIR)")
    by_id: dict[str, str] = {}
    by_key: dict[str, str] = {}
    for image_id, name, _ in entries:
        for seen, key, what in ((by_id, _sample_id(image_id, name), "sample id"),
                                (by_key, image_key(name), "stored image")):
            other = seen.setdefault(key, name)
            if other != name:
                raise DataError(f"{captions.name}: {other} and {name} would become one {what} ({key!r}); "
                                "rename one so the names differ by more than the extension")


def import_captions(images_dir: str | Path, captions: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Import `images_dir` + a COCO json / CSV caption file as a caption set at `out`."""
    images_dir, captions, out = Path(images_dir), Path(captions), Path(out)
    if not images_dir.is_dir():
        raise DataError(f"images directory not found: {images_dir}")
    if not captions.is_file():
        raise DataError(f"captions file not found: {captions}")
    reader = _READERS.get(captions.suffix.lower())
    if reader is None:
        raise DataError(f"--captions {captions}: expected a .json (COCO captions) or .csv (image, caption) file")
    check_output(out, overwrite)
    entries = reader(captions)
    _check_names(entries, captions, images_dir)
    missing = [name for _, name, _ in entries if not (images_dir / name).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} image(s) named in {captions.name} are missing from {images_dir}: {shown}")
    digest = sha256_file(captions)
    request = {"dataset": "import", "images_dir": str(images_dir.resolve()), "captions_sha256": digest}
    with DatasetWriter(out, task="caption", request=request, overwrite=overwrite) as writer:
        for index, (image_id, name, refs) in enumerate(entries):
            refs = [r for r in refs if r]
            sample_id = _sample_id(image_id, name)
            if not refs:
                writer.skip(index, sample_id, name, "no captions")
                continue
            try:
                image = writer.add_image(name, lambda: (images_dir / name).read_bytes())
            except UnreadableImageError as e:
                writer.skip(index, sample_id, name, str(e))
                continue
            coco_id = image_id if isinstance(image_id, int) else index
            writer.add(Sample(id=sample_id, image=image, task="caption", references=refs,
                              extras={"coco_id": coco_id, "file_name": name}))
        meta = {"dataset": "import",
                "source": {"id": str(captions.resolve()), "kind": "local", "revision": digest,
                           "images_dir": str(images_dir.resolve())},
                "split": None, "source_total": len(entries), "seed": None, "limit": None,
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        return writer.commit(meta)
