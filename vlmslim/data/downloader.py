"""`vlmslim data download`: a registered source (hub id or local copy) -> the local layout.

Only the selected rows are touched: the image column is read undecoded (`Image(decode=False)`) and
`Dataset.select(indices)` picks the seeded subset, so `--limit 500` decodes 500 images, not 5 000.
Images are stored as the source's original bytes (no JPEG re-encoding) after a full decode check.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable

import datasets
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub import HfApi, constants as hf_constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
)
from tqdm.auto import tqdm

from vlmslim.data.layout import Sample, select_subset
from vlmslim.data.sources import SOURCES, SourceSpec, row_to_fields
from vlmslim.data.writer import DatasetWriter, UnreadableImageError, check_output
from vlmslim.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class DownloadConfig:
    """One `vlmslim data download` request; `split`/`source` default to the registry entry's."""

    name: str
    out: Path
    split: str | None = None
    limit: int | None = None
    seed: int = 0
    source: str | None = None
    revision: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.name not in SOURCES:
            raise DataError(f"unknown dataset {self.name!r}; choose one of {', '.join(sorted(SOURCES))}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        self.out = Path(self.out)
        self.split = self.split or self.spec.split
        self.source = self.source or self.spec.hub_id

    @property
    def spec(self) -> SourceSpec:
        return SOURCES[self.name]


@dataclass
class SourceTable:
    """Rows of one split with the image column undecoded, where they came from, how to get image bytes."""

    rows: datasets.Dataset
    info: dict
    read_image: Callable[[dict], bytes]


def _offline_message(source: str) -> str:
    reason = "HF_HUB_OFFLINE=1 is set" if hf_constants.HF_HUB_OFFLINE else "no network access?"
    return (f"cannot reach the Hugging Face Hub for '{source}' ({reason}); download on a connected machine "
            f"or pass --source with a local copy (directory, parquet or json files)")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _hub(source: str, fn):
    """Run a hub call, turning its expected failures into one-line `DataError`s."""
    try:
        return fn()
    except (LocalEntryNotFoundError, ConnectionError) as e:  # not cached and the hub is unreachable
        raise DataError(_offline_message(source)) from e
    except RevisionNotFoundError as e:
        raise DataError(f"'{source}': revision not found on the Hugging Face Hub ({_first_line(e)})") from e
    except (DatasetNotFoundError, RepositoryNotFoundError, EntryNotFoundError) as e:
        raise DataError(f"'{source}' not found on the Hugging Face Hub (typo, private or gated: `hf auth login`): "
                        f"{_first_line(e)}") from e
    except HfHubHTTPError as e:
        raise DataError(f"Hugging Face Hub error for '{source}': {_first_line(e)}") from e
    except ValueError as e:  # e.g. unknown split
        raise DataError(f"{source}: {_first_line(e)}") from e


def _hub_revision(repo: str, revision: str | None) -> str | None:
    """The commit sha actually used, for meta.json; the requested revision if the hub cannot say."""
    try:
        return HfApi().dataset_info(repo, revision=revision).sha
    except OSError as e:  # offline (served from cache) or HTTP error: provenance degrades, data is fine
        logger.warning("could not resolve the hub revision of %s (%s); recording %r", repo, e, revision)
        return revision


def _local_path(source: str) -> Path | None:
    """`source` as a local path, or None when it is a hub id."""
    path = Path(source).expanduser()
    if path.exists() or any(ch in source for ch in "*?["):
        return path
    if source.startswith((".", "/", "~")) or path.suffix in (".parquet", ".json", ".arrow"):
        raise DataError(f"--source {source}: no such file or directory")
    return None


def _image_bytes(value) -> bytes:
    """Bytes of an undecoded `datasets.Image` value ({"bytes", "path"}), raw bytes or a file path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    elif isinstance(value, (bytes, bytearray)):
        return bytes(value)
    elif isinstance(value, str) and value:
        return Path(value).read_bytes()
    raise UnreadableImageError(f"no image data in the row ({type(value).__name__})")


def _open_parquet(spec: SourceSpec, source: str, split: str, revision: str | None) -> SourceTable:
    local = _local_path(source)
    if local is None:
        ds = _hub(source, lambda: datasets.load_dataset(source, split=split, revision=revision))
        info = {"id": source, "kind": "hub", "revision": _hub_revision(source, revision)}
    else:
        info = {"id": str(local.resolve()), "kind": "local", "revision": None}
        try:
            if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
                ds = datasets.load_from_disk(str(local))  # a `save_to_disk` directory
                if isinstance(ds, datasets.DatasetDict):
                    if split not in ds:
                        raise DataError(f"--source {source} has splits {sorted(ds)}, not {split!r} (use --split)")
                    ds = ds[split]
            elif local.is_dir():  # hub-like repo copy: data/<split>-00000-of-00002.parquet, ...
                ds = datasets.load_dataset(str(local), split=split)
            else:  # parquet file(s) or a glob: they are the split
                ds = datasets.load_dataset("parquet", data_files=source, split="train")
        except (ValueError, FileNotFoundError) as e:
            raise DataError(f"cannot read --source {source}: {_first_line(e)}") from e
    col = ds.features.get(spec.image_column)
    if isinstance(col, datasets.Image):
        ds = ds.cast_column(spec.image_column, datasets.Image(decode=False))
    return SourceTable(ds, info, lambda row: _image_bytes(row[spec.image_column]))


def _open_json_images(spec: SourceSpec, source: str, split: str, revision: str | None) -> SourceTable:
    stem = spec.split_file(split)
    local = _local_path(source)
    if local is None:
        json_path = _hub(source, lambda: hf_hub_download(source, f"{stem}.json", repo_type="dataset", revision=revision))
        files = _hub(source, lambda: HfApi().list_repo_files(source, repo_type="dataset", revision=revision))
        where = {PurePosixPath(f).name: f for f in files if f.startswith("images")}
        info = {"id": source, "kind": "hub", "revision": _hub_revision(source, revision)}

        def read(name: str) -> bytes:
            if name not in where:
                raise FileNotFoundError(f"{name} is in no images*/ folder of {source}")
            return Path(_hub(source, lambda: hf_hub_download(
                source, where[name], repo_type="dataset", revision=revision))).read_bytes()
    else:
        root = local.parent if local.is_file() else local
        json_path = local if local.is_file() else local / f"{stem}.json"
        if not json_path.is_file():
            found = sorted(p.name for p in root.glob("*.json"))
            raise DataError(f"--source {source} has no {json_path.name} for split {split!r} (found: {found})")
        # Images are spread over images/, images2/, ... folders; the json names them by file name only.
        where = {p.name: p for d in sorted(root.glob("images*")) if d.is_dir() for p in d.rglob("*") if p.is_file()}
        info = {"id": str(local.resolve()), "kind": "local", "revision": None}

        def read(name: str) -> bytes:
            if name not in where:
                raise FileNotFoundError(f"{name} is in no images*/ folder of {root}")
            return where[name].read_bytes()
    try:
        ds = datasets.load_dataset("json", data_files=str(json_path), split="train")
    except (ValueError, datasets.exceptions.DatasetGenerationError) as e:
        raise DataError(f"cannot read {json_path}: {_first_line(e)}") from e
    return SourceTable(ds, info, lambda row: read(str(row[spec.image_column])))


_OPENERS = {"parquet": _open_parquet, "json+images": _open_json_images}


def open_source(spec: SourceSpec, source: str, split: str, revision: str | None = None) -> SourceTable:
    """Open one split of a source; checks that the columns the spec maps are present."""
    table = _OPENERS[spec.layout](spec, source, split, revision)
    table.info["fingerprint"] = table.rows._fingerprint  # datasets' content/cache hash of the split
    missing = [c for c in spec.required_columns if c not in table.rows.column_names]
    if missing:
        raise DataError(f"--source {source} lacks column(s) {missing} needed for {spec.name} "
                        f"(it has {table.rows.column_names})")
    return table


def download(name: str, out: str | Path, **options) -> Path:
    """Download a registered dataset (`SOURCES`) into the local layout at `out`; returns its absolute path.

    Options are `DownloadConfig` fields: split, limit, seed, source, revision, overwrite. Example:
    `download("coco-captions", "data/coco-val500", limit=500, seed=0)`.
    """
    cfg = DownloadConfig(name, Path(out), **options)
    spec = cfg.spec
    logger.info("download %s", {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()})
    check_output(cfg.out, cfg.overwrite)  # before any hub traffic
    table = open_source(spec, cfg.source, cfg.split, cfg.revision)
    total = len(table.rows)
    indices = select_subset(total, cfg.limit, cfg.seed)
    rows = table.rows.select(indices) if len(indices) < total else table.rows
    request = {"dataset": spec.name, "source": table.info["id"], "split": cfg.split, "revision": cfg.revision}
    with DatasetWriter(cfg.out, task=spec.task, request=request, overwrite=cfg.overwrite) as writer:
        seen: set[str] = set()
        progress = tqdm(rows, total=len(indices), desc=f"{spec.name}/{cfg.split}", unit="row", disable=None)
        for index, row in zip(indices, progress):
            f = row_to_fields(spec, row, index)
            if f["id"] in seen:
                writer.skip(index, f["id"], f["image_name"], "duplicate sample id")
                continue
            if not f["references"]:
                writer.skip(index, f["id"], f["image_name"], "no reference answers")
                continue
            if spec.question_column and not f["question"]:
                writer.skip(index, f["id"], f["image_name"], "no question")
                continue
            try:
                image = writer.add_image(f["image_name"], lambda: table.read_image(row))
            except UnreadableImageError as e:
                writer.skip(index, f["id"], f["image_name"], str(e))
                continue
            seen.add(f["id"])
            writer.add(Sample(id=f["id"], image=image, task=spec.task, question=f["question"],
                              references=f["references"], extras=f["extras"]))
        meta = {
            "dataset": spec.name, "source": table.info, "split": cfg.split, "source_total": total,
            "seed": cfg.seed, "limit": cfg.limit, "selected_indices": indices,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "library_versions": {"datasets": datasets.__version__},
        }
        return writer.commit(meta)
