"""Registry of downloadable evaluation sets: where each lives and how its columns map to a `Sample`.

Column names are those of the published sources (checked against their dataset cards):

- lmms-lab/COCO-Caption2017 (parquet, splits val/test): question_id (the image's file name,
  "000000397133.jpg": the only identity column; lmms-eval's coco_cap derives the COCO image id from its
  stem), image, question (a fixed prompt, not kept), answer (list of 5-7 captions: 25,014 over the 5,000
  val images), id (not the image id; constant in test), license, file_name (constant in test), coco_url,
  height, width, date_captured.
- lmms-lab/textvqa (parquet, splits train/validation/test): image_id, question_id, question,
  question_tokens, image, image_width, image_height, flickr_original_url, flickr_300k_url, answers
  (10 strings; empty on test), image_classes, set_name, ocr_tokens.
- ChongyanChen/VQAonline (train.json / val.json / test.json + image folders images*/): rows with image
  (a file name), question, context, answer, topic, url.

A new source is one more `SourceSpec` entry; `--source` points any entry at a mirror or local copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from vlmslim.data.layout import TASK_NAMES


@dataclass(frozen=True)
class SourceSpec:
    """How to turn one source row into a sample.

    layout: "parquet" — rows carry the image (a `datasets.Image` column; hub parquet, local parquet
    files/dirs, `save_to_disk` dirs); "json+images" — a `<split>.json` of rows naming image files that
    live in `images*/` folders next to it (VQAonline).
    """

    name: str
    hub_id: str
    split: str
    task: str
    layout: str
    image_column: str
    references_column: str
    id_column: str | None = None          # absent in a row -> the row index is the id
    image_name_column: str | None = None  # names the image file; rows sharing it share one file
    question_column: str | None = None
    coco_id_column: str | None = None     # COCO image id (an int, or a file name "…_000000397133.jpg")
    extras_columns: tuple[str, ...] = ()  # copied into Sample.extras when present
    split_files: tuple[tuple[str, str], ...] = ()  # json+images: split name -> json file stem
    # parquet: the files of one split in the repo (both lmms-lab repos: data/val-00000-of-00002.parquet)
    split_pattern: str = "data/{split}-*.parquet"

    def __post_init__(self) -> None:
        if self.task not in TASK_NAMES:
            raise ValueError(f"{self.name}: task must be one of {TASK_NAMES}, got {self.task!r}")
        if self.layout not in ("parquet", "json+images"):
            raise ValueError(f"{self.name}: layout must be 'parquet' or 'json+images', got {self.layout!r}")
        if self.task != "caption" and not self.question_column:
            raise ValueError(f"{self.name}: task {self.task!r} needs question_column")

    @property
    def required_columns(self) -> tuple[str, ...]:
        cols = (self.image_column, self.references_column, self.question_column)
        return tuple(c for c in cols if c)

    def split_file(self, split: str) -> str:
        return dict(self.split_files).get(split, split)


SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        SourceSpec(
            name="coco-captions", hub_id="lmms-lab/COCO-Caption2017", split="val", task="caption",
            layout="parquet", image_column="image", references_column="answer", id_column="question_id",
            image_name_column="question_id", coco_id_column="question_id",
            extras_columns=("coco_url", "height", "width"),
        ),
        SourceSpec(
            name="textvqa", hub_id="lmms-lab/textvqa", split="validation", task="vqa",
            layout="parquet", image_column="image", references_column="answers", id_column="question_id",
            image_name_column="image_id", question_column="question",
            extras_columns=("image_id", "ocr_tokens", "image_classes", "set_name"),
        ),
        SourceSpec(
            # The paper's evaluation split is test (train/val are small); --limit picks a subset.
            name="vqaonline", hub_id="ChongyanChen/VQAonline", split="test", task="open-vqa",
            layout="json+images", image_column="image", references_column="answer", id_column="id",
            image_name_column="image", question_column="question",
            extras_columns=("context", "topic", "url"),
            split_files=(("validation", "val"),),
        ),
    )
}


def _text(value) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def references_of(value) -> list[str]:
    """Normalise a reference column (one string or a list) to a list of non-empty strings."""
    items = [value] if isinstance(value, str) else list(value or [])
    return [str(v).strip() for v in items if v is not None and str(v).strip()]


def coco_image_id(value) -> int | None:
    """The integer COCO image id of an id or file name, by lmms-eval's coco_cap rule (int of the last
    "_"-separated part of the stem): "000000397133.jpg" -> 397133, "COCO_val2014_000000397133.jpg" ->
    397133; None when there is none."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    tail = PurePosixPath(str(value or "")).stem.split("_")[-1]
    return int(tail) if tail.isdigit() else None


def row_to_fields(spec: SourceSpec, row: dict, index: int) -> dict:
    """The sample fields of one source row, except the image path (staged by the writer)."""
    raw_id = row.get(spec.id_column) if spec.id_column else None
    sample_id = str(raw_id) if raw_id is not None and str(raw_id) != "" else str(index)
    image_name = row.get(spec.image_name_column) if spec.image_name_column else None
    fields = {
        "id": sample_id,
        "task": spec.task,
        "question": _text(row[spec.question_column]) if spec.question_column else None,
        "references": references_of(row[spec.references_column]),
        "extras": {c: row[c] for c in spec.extras_columns if c in row and row[c] is not None},
        "image_name": str(image_name) if image_name not in (None, "") else sample_id,
    }
    if spec.task == "caption":
        coco_id = coco_image_id(row.get(spec.coco_id_column)) if spec.coco_id_column else None
        fields["extras"]["coco_id"] = coco_id if coco_id is not None else index
    return fields
