"""`vlmslim data download`: a registered source (hub id or local copy) -> the local layout.

Only the requested split is fetched: for a parquet repo (hub or local copy) its own shards are resolved
from the repo's file list (`shards.py`), and with `--limit` only the shards that hold a selected row.
Only the selected rows are touched: the image column is read undecoded (`Image(decode=False)`) and
`Dataset.select(positions)` picks the seeded subset, so `--limit 500` decodes 500 images, not 5 000.
Images are stored as the source's original bytes (no JPEG re-encoding) after a full decode check.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable

import datasets
import pyarrow.parquet as pq
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub import HfApi, HfFileSystem, constants as hf_constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
)
from tqdm.auto import tqdm

from vlmslim.data.layout import Sample, select_subset
from vlmslim.data.shards import plan_shards, split_files, splits_in
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
    """The selected rows of one split (image column undecoded), their row numbers in the split, the
    split's size, where they came from, and how to get a row's image bytes."""

    rows: datasets.Dataset
    indices: list[int]
    total: int
    info: dict
    read_image: Callable[[dict], bytes]


def _select(ds: datasets.Dataset, limit: int | None, seed: int) -> tuple[datasets.Dataset, list[int], int]:
    """(selected rows, their row numbers, split size) for a split that was read whole."""
    indices = select_subset(len(ds), limit, seed)
    return (ds.select(indices) if len(indices) < len(ds) else ds), indices, len(ds)


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


def _local_path(source: str) -> Path | None:
    """`source` as a local path, or None when it is a hub id."""
    path = Path(source).expanduser()
    if path.exists() or any(ch in source for ch in "*?["):
        return path
    if source.startswith((".", "/", "~")) or path.suffix in (".parquet", ".json", ".arrow"):
        raise DataError(f"--source {source}: no such file or directory")
    return None


def _local_info(local: Path) -> dict:
    return {"id": str(local.resolve()), "kind": "local", "revision": None}


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


@dataclass
class RepoFiles:
    """The files of a dataset repo (hub or local copy) behind two calls, so that only the files of one
    split, and only the shards (or images) a subset needs, are ever fetched."""

    files: list[str]                   # repo-relative paths
    num_rows: Callable[[str], int]     # rows of one parquet file, from its footer (no data read)
    fetch: Callable[[str], Path]       # a local path of one file (hub: downloaded once into the HF cache)
    info: dict


def _hub_repo(source: str, revision: str | None) -> RepoFiles:
    # Resolve the commit once: the listing and every file below are read at that sha (meta.json records it).
    api = HfApi()
    sha = _hub(source, lambda: api.dataset_info(source, revision=revision)).sha
    files = _hub(source, lambda: api.list_repo_files(source, repo_type="dataset", revision=sha))
    fs = HfFileSystem()

    def footer_rows(path: str) -> int:
        with fs.open(f"datasets/{source}@{sha}/{path}", "rb") as f:  # range reads of the footer only
            return pq.ParquetFile(f).metadata.num_rows

    return RepoFiles(
        files=list(files),
        num_rows=lambda path: _hub(source, lambda: footer_rows(path)),
        fetch=lambda path: Path(_hub(source, lambda: hf_hub_download(
            source, path, repo_type="dataset", revision=sha))),
        info={"id": source, "kind": "hub", "revision": sha},
    )


def _local_repo(root: Path) -> RepoFiles:
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet") if p.is_file())
    return RepoFiles(files=files, num_rows=lambda path: pq.read_metadata(root / path).num_rows,
                     fetch=lambda path: root / path, info=_local_info(root))


def _read_parquet(paths: list[Path]) -> datasets.Dataset:
    return datasets.load_dataset("parquet", data_files=[str(p) for p in paths], split="train")


def _open_split_shards(spec: SourceSpec, source: str, repo: RepoFiles, split: str, limit: int | None,
                       seed: int) -> tuple[datasets.Dataset, list[int], int] | None:
    """The selected rows of `split` read from its own shards only; None if the repo does not use the
    spec's file layout at all (then `datasets` resolves it, preparing every split)."""
    files = split_files(repo.files, spec.split_pattern, split)
    if not files:
        found = splits_in(repo.files, spec.split_pattern)
        if found:
            raise DataError(f"--source {source} has splits {found}, not {split!r} (use --split)")
        return None
    if limit is None or len(files) == 1:
        repo.info["files"] = files
        return _select(_read_parquet([repo.fetch(f) for f in files]), limit, seed)
    counts = [repo.num_rows(f) for f in files]
    indices = select_subset(sum(counts), limit, seed)
    needed, positions = plan_shards(counts, indices)
    repo.info["files"] = [files[k] for k in needed]
    logger.info("%s/%s: %d of %d shards hold the %d selected rows", source, split, len(needed), len(files),
                len(indices))
    ds = _read_parquet([repo.fetch(files[k]) for k in needed])
    if len(ds) != sum(counts[k] for k in needed):
        raise DataError(f"--source {source}: the shards of {split!r} hold {len(ds)} rows, their footers said "
                        f"{sum(counts[k] for k in needed)}; the files changed while reading, re-run")
    return ds.select(positions), indices, sum(counts)


def _open_parquet(spec: SourceSpec, source: str, split: str, revision: str | None, limit: int | None,
                  seed: int) -> SourceTable:
    local = _local_path(source)
    try:
        if local is None:
            repo = _hub_repo(source, revision)
            opened = _open_split_shards(spec, source, repo, split, limit, seed)
            if opened is None:
                logger.warning("%s: no %s files; datasets.load_dataset prepares every split", source,
                               spec.split_pattern.format(split=split))
                opened = _select(_hub(source, lambda: datasets.load_dataset(
                    source, split=split, revision=repo.info["revision"])), limit, seed)
            info = repo.info
        elif local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
            ds = datasets.load_from_disk(str(local))  # a `save_to_disk` directory
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"--source {source} has splits {sorted(ds)}, not {split!r} (use --split)")
                ds = ds[split]
            opened, info = _select(ds, limit, seed), _local_info(local)
        elif local.is_dir():  # hub-like repo copy: data/<split>-00000-of-00002.parquet, ...
            repo = _local_repo(local)
            opened, info = _open_split_shards(spec, source, repo, split, limit, seed), repo.info
            if opened is None:
                opened = _select(datasets.load_dataset(str(local), split=split), limit, seed)
        else:  # parquet file(s) or a glob: they are the split
            opened = _select(datasets.load_dataset("parquet", data_files=source, split="train"), limit, seed)
            info = _local_info(local)
    except (ValueError, FileNotFoundError) as e:
        raise DataError(f"cannot read --source {source}: {_first_line(e)}") from e
    rows, indices, total = opened
    col = rows.features.get(spec.image_column)
    if isinstance(col, datasets.Image):
        rows = rows.cast_column(spec.image_column, datasets.Image(decode=False))
    return SourceTable(rows, indices, total, info, lambda row: _image_bytes(row[spec.image_column]))


def _open_json_images(spec: SourceSpec, source: str, split: str, revision: str | None, limit: int | None,
                      seed: int) -> SourceTable:
    stem = spec.split_file(split)
    local = _local_path(source)
    if local is None:
        repo = _hub_repo(source, revision)  # the split's json, then only the selected rows' images
        if f"{stem}.json" not in repo.files:
            found = sorted(f for f in repo.files if f.endswith(".json") and "/" not in f)
            raise DataError(f"'{source}' has no {stem}.json for split {split!r} (found: {found})")
        json_path = repo.fetch(f"{stem}.json")
        where = {PurePosixPath(f).name: f for f in repo.files if f.startswith("images")}
        info = repo.info

        def read(name: str) -> bytes:
            if name not in where:
                raise FileNotFoundError(f"{name} is in no images*/ folder of {source}")
            return repo.fetch(where[name]).read_bytes()
    else:
        root = local.parent if local.is_file() else local
        json_path = local if local.is_file() else local / f"{stem}.json"
        if not json_path.is_file():
            found = sorted(p.name for p in root.glob("*.json"))
            raise DataError(f"--source {source} has no {json_path.name} for split {split!r} (found: {found})")
        # Images are spread over images/, images2/, ... folders; the json names them by file name only.
        where = {p.name: p for d in sorted(root.glob("images*")) if d.is_dir() for p in d.rglob("*") if p.is_file()}
        info = _local_info(local)

        def read(name: str) -> bytes:
            if name not in where:
                raise FileNotFoundError(f"{name} is in no images*/ folder of {root}")
            return where[name].read_bytes()
    try:
        ds = datasets.load_dataset("json", data_files=str(json_path), split="train")
    except (ValueError, datasets.exceptions.DatasetGenerationError) as e:
        raise DataError(f"cannot read {json_path}: {_first_line(e)}") from e
    rows, indices, total = _select(ds, limit, seed)
    return SourceTable(rows, indices, total, info, lambda row: read(str(row[spec.image_column])))


_OPENERS = {"parquet": _open_parquet, "json+images": _open_json_images}


def open_source(spec: SourceSpec, source: str, split: str, revision: str | None = None, *,
                limit: int | None = None, seed: int = 0) -> SourceTable:
    """The seeded subset (`select_subset`; all rows without `limit`) of one split of a source; checks
    that the columns the spec maps are present."""
    table = _OPENERS[spec.layout](spec, source, split, revision, limit, seed)
    table.info["fingerprint"] = table.rows._fingerprint  # datasets' content/cache hash of the rows read
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
    table = open_source(spec, cfg.source, cfg.split, cfg.revision, limit=cfg.limit, seed=cfg.seed)
    rows, indices, total = table.rows, table.indices, table.total
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
