"""Data step: sources in their real column layouts -> `vlmslim data ...` -> `vlmslim.data.load`.

Everything is built in tmp_path (datasets + PIL); nothing touches the network.
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import huggingface_hub
import numpy as np
import pytest
from click.testing import CliRunner
from datasets import Features, List, Value
from PIL import Image
from pycocotools.coco import COCO

from vlmslim.cli import cli
from vlmslim.data import downloader as download_mod
from vlmslim.data import load, select_subset, vocabulary
from vlmslim.data.layout import sha256_file
from vlmslim.data.shards import plan_shards, split_files, splits_in
from vlmslim.data.synthetic import LOCATIONS, captions, random_scene
from vlmslim.errors import DataError


@pytest.fixture(autouse=True)
def _isolated_hf(tmp_path, monkeypatch):
    # Offline whatever the environment says, and datasets' arrow cache inside tmp.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _jpeg(i: int, size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10 * i % 256, 80, 160)).save(buf, format="JPEG")
    return buf.getvalue()


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (200, 10 * i % 256, 0)).save(buf, format="PNG")
    return buf.getvalue()


def run(*args: str):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    # stderr may carry warnings/progress before it; the error itself is exactly one line, the last.
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == lines[-1:] and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


# --- sources in their published column layouts ---------------------------------------------------

COCO_FEATURES = Features({
    "question_id": Value("string"), "image": datasets.Image(), "question": Value("string"),
    "answer": List(Value("string")), "id": Value("int64"), "license": Value("int8"),
    "file_name": Value("string"), "coco_url": Value("string"), "height": Value("int32"),
    "width": Value("int32"), "date_captured": Value("string"),
})


# Real val2017 image ids: question_id is "<id:012d>.jpg" and is the only column that names the image.
COCO_IMAGE_IDS = (397133, 37777, 252219, 87038, 174482, 403385, 6818, 480985, 458054, 331352, 296649, 386912)


def coco_name(i: int) -> str:
    return f"{COCO_IMAGE_IDS[i]:012d}.jpg"


def n_captions(i: int) -> int:
    return 5 + i % 3  # val has 5-7 captions per image (25,014 over 5,000)


def coco_source(root: Path, n: int = 8, bad: dict[int, bytes] | None = None, shade: int = 0, *,
                split: str = "val", shards: int = 2, constant_identity: bool = False) -> Path:
    """lmms-lab/COCO-Caption2017 layout: data/<split>-0000K-of-0000N.parquet, rows as on the card.

    `id` is never the image id (an unrelated running number here); with `constant_identity` `id` and
    `file_name` are the same in every row, as in the real test split.
    """
    bad = bad or {}
    rows = {k: [] for k in COCO_FEATURES}
    for i in range(n):
        name = coco_name(i)
        rows["question_id"].append(name)
        rows["image"].append({"bytes": bad.get(i, _jpeg(i + shade)), "path": None})
        rows["question"].append("Please carefully observe the image and come up with a caption for the image.")
        rows["answer"].append([f"caption {j} of image {i}" for j in range(n_captions(i))])
        rows["id"].append(0 if constant_identity else 38 + 7 * i)
        rows["license"].append(3)
        rows["file_name"].append(coco_name(0) if constant_identity else name)
        rows["coco_url"].append(f"http://images.cocodataset.org/val2017/{name}")
        rows["height"].append(12)
        rows["width"].append(16)
        rows["date_captured"].append("2013-11-14 17:02:52")
    ds = datasets.Dataset.from_dict(rows, features=COCO_FEATURES)
    (root / "data").mkdir(parents=True, exist_ok=True)
    bounds = [round(k * n / shards) for k in range(shards + 1)]
    for k in range(shards):
        ds.select(range(bounds[k], bounds[k + 1])).to_parquet(root / "data" / f"{split}-{k:05d}-of-{shards:05d}.parquet")
    return root


TEXTVQA_FEATURES = Features({
    "image_id": Value("string"), "question_id": Value("int32"), "question": Value("string"),
    "question_tokens": List(Value("string")), "image": datasets.Image(), "image_width": Value("int32"),
    "image_height": Value("int32"), "flickr_original_url": Value("string"), "flickr_300k_url": Value("string"),
    "answers": List(Value("string")), "image_classes": List(Value("string")), "set_name": Value("string"),
    "ocr_tokens": List(Value("string")),
})


def textvqa_source(root: Path) -> Path:
    """lmms-lab/textvqa columns, saved with save_to_disk; questions 0 and 1 share an image."""
    rows = {k: [] for k in TEXTVQA_FEATURES}
    for i in range(5):
        image_id = f"img{max(i - 1, 0):03d}"
        rows["image_id"].append(image_id)
        rows["question_id"].append(34602 + i)
        rows["question"].append(f"what is written on sign {i}?")
        rows["question_tokens"].append(["what", "is", "written", "on", "sign", str(i)])
        rows["image"].append({"bytes": _jpeg(i, (20, 20)), "path": None})
        rows["image_width"].append(20)
        rows["image_height"].append(20)
        rows["flickr_original_url"].append(f"https://farm.example/{image_id}_o.jpg")
        rows["flickr_300k_url"].append(f"https://farm.example/{image_id}_z.jpg")
        rows["answers"].append([f"stop {i}"] * 7 + ["stop", "halt", "unanswerable"])
        rows["image_classes"].append(["Traffic sign"])
        rows["set_name"].append("val")
        rows["ocr_tokens"].append(["STOP", str(i)])
    ds = datasets.Dataset.from_dict(rows, features=TEXTVQA_FEATURES)
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(root))
    return root


def vqaonline_source(root: Path) -> Path:
    """ChongyanChen/VQAonline layout: train/val/test.json rows naming images spread over images*/ folders
    (here test: 5 rows, train: 2, val: 1)."""
    sizes = {"test": 5, "train": 2, "val": 1}
    for split, n in sizes.items():
        rows = []
        for i in range(n):
            name = f"q{i}.png" if split == "test" else f"{split}{i}.png"
            folder = root / ("images" if i < 3 else "images2")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(_png(i) if split == "test" else _png(50 + i))
            text = f"problem {i}" if split == "test" else f"{split} problem {i}"
            rows.append({"image": name, "question": f"How do I fix {text}?",
                         "context": f"I tried restarting, see screenshot {i}." if split == "test" else f"{split} context",
                         "answer": f"A long answer number {i}." if split == "test" else f"The {split} answer {i}.",
                         "topic": "superuser", "url": f"https://superuser.example/q/{split}{i}"})
        (root / f"{split}.json").write_text(json.dumps(rows))
    return root


# --- download ---------------------------------------------------------------------------------------

def test_download_coco_end_to_end_seeded_subset(tmp_path):
    src = coco_source(tmp_path / "coco")
    seed = 1
    expected = select_subset(8, 4, seed)
    assert expected != [0, 1, 2, 3]  # a random subset, not the first N

    result = run("data", "download", "coco-captions", "--source", src, "--limit", 4, "--seed", seed,
                 "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    ds = load(tmp_path / "out")
    assert ds.task == "caption" and len(ds) == 4
    assert [s.id for s in ds] == [coco_name(i) for i in expected]
    assert [s.extras["coco_id"] for s in ds] == [COCO_IMAGE_IDS[i] for i in expected]
    assert [len(s.references) for s in ds] == [n_captions(i) for i in expected]
    assert all(s.question is None for s in ds)
    first = ds[0]
    assert first.references[0] == f"caption 0 of image {expected[0]}"
    img = ds.open_image(first)
    assert img.mode == "RGB" and img.size == (16, 12)
    # Original bytes kept (no JPEG re-encoding).
    assert ds.image_path(first).read_bytes() == _jpeg(expected[0])
    meta = ds.meta
    assert meta["selected_indices"] == expected and meta["seed"] == seed and meta["limit"] == 4
    assert meta["split"] == "val" and meta["source_total"] == 8 and meta["source"]["kind"] == "local"
    assert meta["counts"] == {"samples": 4, "images": 4, "skipped": 0}
    assert meta["samples_sha256"] == sha256_file(tmp_path / "out" / "samples.jsonl")

    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    assert sorted(coco.getImgIds()) == sorted(COCO_IMAGE_IDS[i] for i in expected)
    assert len(coco.getAnnIds()) == sum(n_captions(i) for i in expected)
    res = coco.loadRes([{"image_id": COCO_IMAGE_IDS[i], "caption": "a photo"} for i in expected])
    assert len(res.getAnnIds()) == 4

    # Same seed, the same files given as a parquet glob -> identical samples.jsonl.
    again = run("data", "download", "coco-captions", "--source", src / "data" / "val-*.parquet", "--limit", 4,
                "--seed", seed, "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / "samples.jsonl").read_bytes() == (tmp_path / "out" / "samples.jsonl").read_bytes()
    other = run("data", "download", "coco-captions", "--source", src, "--limit", 4, "--seed", 2, "--out", tmp_path / "s2")
    assert other.exit_code == 0
    assert load(tmp_path / "s2").meta["selected_indices"] == select_subset(8, 4, 2) != expected


def test_coco_identity_is_question_id_not_id_or_file_name(tmp_path):
    # The test split's layout: `id` and `file_name` are the same in every row; question_id names the image.
    src = coco_source(tmp_path / "coco", n=6, constant_identity=True)
    result = run("data", "download", "coco-captions", "--source", src, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    ds = load(tmp_path / "out")
    assert len(ds) == 6 and ds.meta["counts"] == {"samples": 6, "images": 6, "skipped": 0}
    assert [s.id for s in ds] == [coco_name(i) for i in range(6)]
    assert [s.extras["coco_id"] for s in ds] == list(COCO_IMAGE_IDS[:6])  # int of the stem, as lmms-eval
    assert [ds.image_path(s).read_bytes() for s in ds] == [_jpeg(i) for i in range(6)]
    assert [len(s.references) for s in ds] == [5, 6, 7, 5, 6, 7]  # every caption kept
    assert "file_name" not in ds[0].extras and ds[1].extras["coco_url"].endswith(coco_name(1))
    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    assert sorted(coco.getImgIds()) == sorted(COCO_IMAGE_IDS[:6]) and len(coco.getAnnIds()) == 36


HUB_SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """The Hugging Face Hub for one dataset repo, served from a local folder of its files; records every
    file requested (`downloads`) and every parquet footer read (`footers`). No network."""

    def __init__(self, root: Path, repo: str, monkeypatch):
        self.root, self.repo, self.downloads, self.footers = root, repo, [], []
        hub = self

        class Api:
            def dataset_info(self, repo_id, *, revision=None, **_):
                assert repo_id == hub.repo
                return SimpleNamespace(id=repo_id, sha=HUB_SHA)

            def list_repo_files(self, repo_id, *, repo_type=None, revision=None, **_):
                assert (repo_id, repo_type, revision) == (hub.repo, "dataset", HUB_SHA)
                return sorted(p.relative_to(hub.root).as_posix() for p in hub.root.rglob("*") if p.is_file())

        def hf_hub_download(repo_id, filename, *, repo_type=None, revision=None, **_):
            assert (repo_id, repo_type, revision) == (hub.repo, "dataset", HUB_SHA)  # pinned to one commit
            hub.downloads.append(filename)
            return str(hub.root / filename)

        class FileSystem:
            def open(self, path, mode="rb", **_):
                prefix = f"datasets/{hub.repo}@{HUB_SHA}/"
                assert path.startswith(prefix) and mode == "rb", path
                hub.footers.append(path[len(prefix):])
                return open(hub.root / path[len(prefix):], "rb")

        monkeypatch.setattr(download_mod, "HfApi", Api)
        monkeypatch.setattr(download_mod, "hf_hub_download", hf_hub_download)
        monkeypatch.setattr(download_mod, "HfFileSystem", FileSystem)


def _coco_repo(root: Path) -> Path:
    """val: 12 rows in 3 shards of 4; test: 2 shards that are not even parquet (reading one would fail)."""
    coco_source(root, n=12, shards=3)
    for k in range(2):
        (root / "data" / f"test-{k:05d}-of-00002.parquet").write_bytes(b"6.6 GB of test shards")
    return root


def test_hub_download_fetches_only_the_split_and_the_shards_a_subset_needs(tmp_path, monkeypatch):
    hub = FakeHub(_coco_repo(tmp_path / "hub"), "lmms-lab/COCO-Caption2017", monkeypatch)
    val = [f"data/val-{k:05d}-of-00003.parquet" for k in range(3)]
    result = run("data", "download", "coco-captions", "--out", tmp_path / "all")
    assert result.exit_code == 0, result.output
    assert hub.downloads == val and hub.footers == []  # no test shard; no footer needed without --limit
    ds = load(tmp_path / "all")
    assert [s.id for s in ds] == [coco_name(i) for i in range(12)]
    assert ds.meta["source"]["kind"] == "hub" and ds.meta["source"]["revision"] == HUB_SHA
    assert ds.meta["source"]["files"] == val and ds.meta["source_total"] == 12

    # A seeded subset is uniform over the whole split; only the shards its rows fall in are fetched.
    seed = next(s for s in range(100) if len({i // 4 for i in select_subset(12, 2, s)}) == 2)
    expected = select_subset(12, 2, seed)
    needed = sorted({val[i // 4] for i in expected})
    hub.downloads.clear()
    result = run("data", "download", "coco-captions", "--limit", 2, "--seed", seed, "--out", tmp_path / "two")
    assert result.exit_code == 0, result.output
    assert hub.footers == val and hub.downloads == needed and len(needed) == 2
    ds = load(tmp_path / "two")
    assert [s.id for s in ds] == [coco_name(i) for i in expected]  # row numbers mapped across shards
    assert [s.references[0] for s in ds] == [f"caption 0 of image {i}" for i in expected]
    assert ds.meta["selected_indices"] == expected and ds.meta["source_total"] == 12

    hub.downloads.clear()
    wrong = run("data", "download", "coco-captions", "--split", "train", "--out", tmp_path / "bad")
    assert_one_line_error(wrong, "splits ['test', 'val']", "'train'")
    assert hub.downloads == [] and not (tmp_path / "bad").exists()


def test_local_repo_copy_reads_only_the_split_files(tmp_path):
    src = _coco_repo(tmp_path / "copy")  # a snapshot dir: data/val-*, data/test-* (unreadable here)
    result = run("data", "download", "coco-captions", "--source", src, "--limit", 3, "--seed", 0, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    ds = load(tmp_path / "out")
    assert [s.id for s in ds] == [coco_name(i) for i in select_subset(12, 3, 0)]
    assert ds.meta["source_total"] == 12
    assert set(ds.meta["source"]["files"]) <= {f"data/val-{k:05d}-of-00003.parquet" for k in range(3)}


def test_corrupt_images_are_skipped_counted_and_named(tmp_path):
    truncated = _jpeg(5, (64, 64))[:200]
    src = coco_source(tmp_path / "coco", bad={3: b"definitely not an image", 5: truncated})
    result = run("data", "download", "coco-captions", "--source", src, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    ds = load(tmp_path / "out")
    assert len(ds) == 6 and ds.meta["counts"]["skipped"] == 2
    skipped = {s["image"]: s for s in ds.meta["skipped"]}
    assert set(skipped) == {coco_name(3), coco_name(5)}
    assert skipped[coco_name(3)]["id"] == coco_name(3) and skipped[coco_name(3)]["index"] == 3
    assert all("corrupt image" in s["reason"] for s in skipped.values())
    assert len(list((tmp_path / "out" / "images").iterdir())) == 6


def test_download_textvqa_from_save_to_disk(tmp_path):
    src = textvqa_source(tmp_path / "textvqa")
    result = run("data", "download", "textvqa", "--source", src, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    ds = load(tmp_path / "out")
    assert ds.task == "vqa" and len(ds) == 5
    s = ds[2]
    assert s.id == str(34602 + 2) and s.question == "what is written on sign 2?"
    assert len(s.references) == 10 and s.references[0] == "stop 2"
    assert s.extras["ocr_tokens"] == ["STOP", "2"] and s.extras["image_id"] == "img001"
    assert ds[0].image == ds[1].image  # one file for the questions that share an image
    assert len(list((tmp_path / "out" / "images").iterdir())) == 4
    assert not (tmp_path / "out" / "annotations.json").exists()
    wrong = run("data", "download", "textvqa", "--source", src, "--split", "train", "--out", tmp_path / "o2")
    assert_one_line_error(wrong, "splits ['validation']")


def test_download_vqaonline_json_and_image_folders(tmp_path):
    src = vqaonline_source(tmp_path / "vqaonline")
    result = run("data", "download", "vqaonline", "--source", src, "--limit", 3, "--seed", 0, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    ds = load(tmp_path / "out")
    assert ds.task == "open-vqa" and len(ds) == 3 and ds.meta["split"] == "test"
    for s in ds:
        i = int(s.id)  # no id column: the row index
        assert s.references == [f"A long answer number {i}."]
        assert s.extras["context"] == f"I tried restarting, see screenshot {i}."
        assert ds.image_path(s).read_bytes() == _png(i)  # found in images/ or images2/


def test_vqaonline_seed004_split_is_one_flag(tmp_path, monkeypatch):
    # Seed 004 evaluated VQAonline's train split (665 rows); our default is test (63,746): --split train.
    hub = FakeHub(vqaonline_source(tmp_path / "hub"), "ChongyanChen/VQAonline", monkeypatch)
    result = run("data", "download", "vqaonline", "--split", "train", "--out", tmp_path / "train")
    assert result.exit_code == 0, result.output
    assert hub.downloads == ["train.json", "images/train0.png", "images/train1.png"]  # not test.json
    ds = load(tmp_path / "train")
    assert ds.meta["split"] == "train" and ds.meta["source_total"] == 2
    assert ds.meta["source"]["revision"] == HUB_SHA
    assert [s.question for s in ds] == ["How do I fix train problem 0?", "How do I fix train problem 1?"]
    assert [s.references for s in ds] == [["The train answer 0."], ["The train answer 1."]]

    hub.downloads.clear()
    result = run("data", "download", "vqaonline", "--limit", 2, "--seed", 0, "--out", tmp_path / "test")
    assert result.exit_code == 0, result.output
    ds = load(tmp_path / "test")
    assert ds.meta["split"] == "test" and ds.meta["source_total"] == 5
    assert hub.downloads == ["test.json", *(f"images/q{i}.png" if i < 3 else f"images2/q{i}.png"
                                            for i in select_subset(5, 2, 0))]


def test_interrupted_download_resumes_without_refetching(tmp_path, monkeypatch):
    src = coco_source(tmp_path / "coco")
    out = tmp_path / "out"
    real = download_mod._image_bytes
    reads, interrupt = [], True

    class Interrupted(Exception):  # stands for Ctrl-C / a dropped connection mid-download
        pass

    def flaky(value):
        reads.append(value["bytes"])
        if interrupt and len(reads) == 3:
            raise Interrupted
        return real(value)

    monkeypatch.setattr(download_mod, "_image_bytes", flaky)
    with pytest.raises(Interrupted):
        download_mod.download("coco-captions", out, source=str(src))
    staging = tmp_path / "out.partial"
    assert not out.exists() and len(list((staging / "images").iterdir())) == 2

    interrupt = False
    reads.clear()
    download_mod.download("coco-captions", out, source=str(src))
    assert reads == [_jpeg(i) for i in range(2, 8)]  # the 2 staged images were not read again
    assert len(load(out)) == 8 and not staging.exists()


def test_staged_images_of_another_source_are_not_reused(tmp_path, monkeypatch):
    src_a, src_b = coco_source(tmp_path / "a"), coco_source(tmp_path / "b", shade=7)
    real = download_mod._image_bytes

    def interrupted(value):
        if len(list((tmp_path / "out.partial" / "images").iterdir())) == 2:
            raise RuntimeError("interrupted")
        return real(value)

    monkeypatch.setattr(download_mod, "_image_bytes", interrupted)
    with pytest.raises(RuntimeError):
        download_mod.download("coco-captions", tmp_path / "out", source=str(src_a))
    monkeypatch.setattr(download_mod, "_image_bytes", real)
    ds = load(download_mod.download("coco-captions", tmp_path / "out", source=str(src_b)))
    assert [ds.image_path(s).read_bytes() for s in ds] == [_jpeg(i + 7) for i in range(8)]


def test_download_errors_are_one_line_and_leave_nothing(tmp_path):
    src = coco_source(tmp_path / "coco", n=2, bad={0: b"x", 1: b"y"})
    out = tmp_path / "out"
    assert_one_line_error(run("data", "download", "nope", "--out", out), "unknown dataset 'nope'", "coco-captions")
    assert_one_line_error(run("data", "download", "textvqa", "--out", out), "lmms-lab/textvqa", "HF_HUB_OFFLINE")
    assert_one_line_error(run("data", "download", "coco-captions", "--source", src, "--out", out),
                          "no samples", "corrupt image")
    assert_one_line_error(run("data", "download", "coco-captions", "--source", tmp_path / "missing", "--out", out),
                          "no such file")
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_existing_out_needs_overwrite(tmp_path):
    src = coco_source(tmp_path / "coco", n=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(run("data", "download", "coco-captions", "--source", src, "--out", out), "--overwrite")
    assert (out / "keep.txt").read_text() == "mine" and not (tmp_path / "out.partial").exists()
    result = run("data", "download", "coco-captions", "--source", src, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and len(load(out)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "hf-cache", "out"]  # no .old-/.partial left


# --- subset, loader ---------------------------------------------------------------------------------

def test_select_subset_is_seeded_sorted_and_nested():
    a = select_subset(1000, 50, seed=7)
    assert a == select_subset(1000, 50, seed=7) and a == sorted(set(a)) and len(a) == 50
    assert a != list(range(50)) and a != select_subset(1000, 50, seed=8)
    assert set(select_subset(1000, 20, seed=7)) <= set(a)  # smaller subset inside the larger one
    assert select_subset(5, None) == select_subset(5, 10) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="limit"):
        select_subset(5, 0)


def test_load_rejects_broken_directories(tmp_path):
    good = tmp_path / "good"
    assert run("data", "synthetic", "--out", good, "--n", 3).exit_code == 0
    with pytest.raises(DataError, match="not found"):
        load(tmp_path / "nowhere")

    def broken(name, damage):
        d = tmp_path / name
        shutil.copytree(good, d)
        damage(d)
        return d

    with pytest.raises(DataError, match="samples.jsonl is missing"):
        load(broken("nosamples", lambda d: (d / "samples.jsonl").unlink()))
    with pytest.raises(DataError, match="sha256"):
        load(broken("tampered", lambda d: (d / "samples.jsonl").open("a").write("{}\n")))
    with pytest.raises(DataError, match="1 image file"):
        load(broken("noimage", lambda d: (d / "images" / "shapes-s0-00001.png").unlink()))
    corrupt = broken("corrupt", lambda d: (d / "images" / "shapes-s0-00002.png").write_bytes(b"garbage"))
    ds = load(corrupt)
    with pytest.raises(DataError, match="shapes-s0-00002.png"):
        ds.open_image(ds[2])
    sub = ds.select(2, seed=0)
    assert len(sub) == 2 and sub.meta["subset"]["indices"] == select_subset(3, 2, 0)


# --- synthetic --------------------------------------------------------------------------------------

def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_is_byte_identical_per_seed(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        result = run("data", "synthetic", "--out", tmp_path / name, "--n", 30, "--seed", seed, "--size", 48)
        assert result.exit_code == 0, result.output
    a, b, c = (_tree(tmp_path / n) for n in "abc")
    assert a == b and len(a) == 33  # 30 PNGs + samples.jsonl + meta.json + annotations.json
    assert a["samples.jsonl"] != c["samples.jsonl"]
    ds = load(tmp_path / "a")
    assert ds.task == "caption" and len(ds) == 30
    assert all(len(s.references) == 5 and len(set(s.references)) == 5 for s in ds)
    assert ds.open_image(ds[0]).size == (48, 48)
    assert len(COCO(str(tmp_path / "a" / "annotations.json")).getAnnIds()) == 150


def test_synthetic_captions_follow_the_scene_and_vocabulary():
    vocab = set(vocabulary())
    rng = random.Random(0)
    for _ in range(300):
        scene = random_scene(rng)
        caps = captions(scene)
        assert all(set(c.split()) <= vocab for c in caps), caps
        for s in scene.shapes:  # every shape's facts are in every caption
            full, where = f"{s.size} {s.color} {s.shape}", LOCATIONS[s.cell]
            assert all(f"{full} {where}" in c for c in (caps[0], caps[1], caps[3])), caps
            assert f"{where} a {full}" in caps[2] and f"{s.color} {s.shape}" in caps[4]
        assert all(f"{scene.background} background" in c for c in caps)
        assert caps[3].startswith(("one shape ", "two shapes ", "three shapes ")[len(scene.shapes) - 1])
        assert caps == captions(scene)
        order = [s.cell for s in scene.shapes]
        assert order == sorted(order)  # reading order: the fixed ordering rule
    # Same facts -> same captions, regardless of pixel jitter.
    scene = random_scene(random.Random(3))
    moved = type(scene)(scene.background, tuple(type(s)(s.shape, s.color, s.size, s.cell) for s in scene.shapes))
    assert captions(moved) == captions(scene)


# --- import -----------------------------------------------------------------------------------------

def _photos(root: Path, n: int = 3) -> Path:
    root.mkdir()
    for i in range(n):
        (root / f"p{i}.jpg").write_bytes(_jpeg(i))
    return root


def test_import_coco_json(tmp_path):
    photos = _photos(tmp_path / "photos")
    doc = {"images": [{"id": 7 + i, "file_name": f"p{i}.jpg"} for i in range(3)],
           "annotations": [{"id": k, "image_id": 7 + k % 3, "caption": f"caption {k}"} for k in range(6)]}
    (tmp_path / "caps.json").write_text(json.dumps(doc))
    result = run("data", "import", photos, "--captions", tmp_path / "caps.json", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    ds = load(tmp_path / "out")
    assert [s.id for s in ds] == ["7", "8", "9"] and ds[0].references == ["caption 0", "caption 3"]
    assert [s.extras["coco_id"] for s in ds] == [7, 8, 9]
    assert COCO(str(tmp_path / "out" / "annotations.json")).getImgIds() == [7, 8, 9]


def test_import_csv_groups_rows_and_names_missing_images(tmp_path):
    photos = _photos(tmp_path / "photos", n=2)
    rows = [("p0.jpg", "a red thing"), ("p1.jpg", "a blue thing"), ("p0.jpg", "something red")]
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    result = run("data", "import", photos, "--captions", tmp_path / "caps.csv", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    ds = load(tmp_path / "out")
    assert [(s.id, s.references) for s in ds] == [("p0", ["a red thing", "something red"]), ("p1", ["a blue thing"])]

    with open(tmp_path / "more.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption"), ("p0.jpg", "x"), ("gone.jpg", "y")])
    missing = run("data", "import", photos, "--captions", tmp_path / "more.csv", "--out", tmp_path / "o2")
    assert_one_line_error(missing, "gone.jpg", "missing")
    assert not (tmp_path / "o2").exists()


def test_plan_shards_maps_split_rows_to_shard_positions():
    assert plan_shards([4, 4, 4], [1, 9]) == ([0, 2], [1, 5])
    assert plan_shards([4, 0, 4], [0, 3, 4]) == ([0, 2], [0, 3, 4])  # an empty shard is never needed
    assert plan_shards([3, 5], list(range(8))) == ([0, 1], list(range(8)))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        plan_shards([3, 5], [8])
    files = ["README.md", "data/val-00000-of-00002.parquet", "data/validation-00000-of-00001.parquet",
             "data/val-00001-of-00002.parquet", "data/test-00000-of-00001.parquet"]
    assert split_files(files, "data/{split}-*.parquet", "val") == [
        "data/val-00000-of-00002.parquet", "data/val-00001-of-00002.parquet"]
    assert splits_in(files, "data/{split}-*.parquet") == ["test", "val", "validation"]


# --- import: bad inputs -------------------------------------------------------------------------------

def _csv(path: Path, rows, encoding="utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        csv.writer(f).writerows([("image", "caption"), *rows])
    return path


def _nothing_written(tmp_path: Path, name: str = "out") -> bool:
    return not (tmp_path / name).exists() and not (tmp_path / f"{name}.partial").exists()


@pytest.mark.parametrize("name", ["../x.png", "../../../etc/passwd", "/etc/hostname", "sub/../../x.png"])
def test_import_refuses_paths_outside_the_images_dir(tmp_path, name):
    photos = _photos(tmp_path / "photos", n=1)
    (tmp_path / "x.png").write_bytes(_png(1))  # exists: it must be refused, not read
    caps = _csv(tmp_path / "caps.csv", [("p0.jpg", "inside"), (name, "outside")])
    result = run("data", "import", photos, "--captions", caps, "--out", tmp_path / "out")
    assert_one_line_error(result, name, "outside")
    assert _nothing_written(tmp_path)


def test_import_refuses_names_that_differ_only_by_extension_before_writing(tmp_path):
    photos = _photos(tmp_path / "photos", n=1)
    (photos / "dup.png").write_bytes(_png(0))
    (photos / "dup.jpg").write_bytes(_jpeg(9))
    caps = _csv(tmp_path / "caps.csv", [("p0.jpg", "fine"), ("dup.png", "a png"), ("dup.jpg", "a jpeg")])
    assert_one_line_error(run("data", "import", photos, "--captions", caps, "--out", tmp_path / "out"),
                          "dup.png", "dup.jpg")
    assert _nothing_written(tmp_path)
    # COCO json: distinct image ids, but the two files would still land on one image file.
    doc = {"images": [{"id": 1, "file_name": "dup.png"}, {"id": 2, "file_name": "dup.jpg"}],
           "annotations": [{"id": 0, "image_id": 1, "caption": "a png"}, {"id": 1, "image_id": 2, "caption": "a jpeg"}]}
    (tmp_path / "caps.json").write_text(json.dumps(doc))
    assert_one_line_error(run("data", "import", photos, "--captions", tmp_path / "caps.json", "--out", tmp_path / "out"),
                          "dup.png", "dup.jpg")
    assert _nothing_written(tmp_path)
    doc["images"][1]["id"] = 1  # one image id listed twice
    (tmp_path / "caps.json").write_text(json.dumps(doc))
    assert_one_line_error(run("data", "import", photos, "--captions", tmp_path / "caps.json", "--out", tmp_path / "out"),
                          "image id 1 appears 2 times")
    assert _nothing_written(tmp_path)


def test_import_csv_encodings(tmp_path):
    photos = _photos(tmp_path / "photos", n=2)
    bom = _csv(tmp_path / "bom.csv", [("p0.jpg", "un café au lait"), ("p1.jpg", "a blue thing")], encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    result = run("data", "import", photos, "--captions", bom, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert [s.references for s in load(tmp_path / "out")] == [["un café au lait"], ["a blue thing"]]

    latin1 = _csv(tmp_path / "latin1.csv", [("p1.jpg", "plain"), ("p0.jpg", "un café")], encoding="latin-1")
    assert_one_line_error(run("data", "import", photos, "--captions", latin1, "--out", tmp_path / "o2"),
                          "latin1.csv:3", "UTF-8")
    assert _nothing_written(tmp_path, "o2")
    (tmp_path / "latin1.json").write_bytes('{"images": [], "annotations": [], "x": "café"}'.encode("latin-1"))
    assert_one_line_error(run("data", "import", photos, "--captions", tmp_path / "latin1.json", "--out", tmp_path / "o3"),
                          "latin1.json:1", "UTF-8")


def _write(path: Path, array, fmt: str) -> Path:
    Image.fromarray(array).save(path, format=fmt)
    return path


def test_import_high_bit_depth_images_are_scaled_not_clipped(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    grad16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040)  # 0 .. 65520
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    wide = np.linspace(-2, 6, 64, dtype=np.float32).reshape(8, 8)
    nan = unit.copy()
    nan[0, 0] = np.nan
    _write(photos / "deep.png", grad16, "PNG")
    _write(photos / "unit.tif", unit, "TIFF")
    _write(photos / "wide.tif", wide, "TIFF")
    _write(photos / "nan.tif", nan, "TIFF")
    assert Image.open(photos / "deep.png").mode == "I;16" and Image.open(photos / "unit.tif").mode == "F"
    caps = _csv(tmp_path / "caps.csv", [(n, f"image {n}") for n in ("deep.png", "unit.tif", "wide.tif", "nan.tif")])
    result = run("data", "import", photos, "--captions", caps, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    ds = load(tmp_path / "out")
    pixels = {s.extras["file_name"]: np.asarray(ds.open_image(s)) for s in ds}
    assert set(pixels) == {"deep.png", "unit.tif", "wide.tif"}
    assert all(p.shape == (8, 8, 3) and p.dtype == np.uint8 for p in pixels.values())
    assert (pixels["deep.png"][..., 0] == grad16 >> 8).all()  # PIL's convert: 99.6 % white
    assert (pixels["deep.png"][..., 0] == pixels["deep.png"][..., 2]).all()
    assert (pixels["unit.tif"][..., 1] == np.round(unit * 255)).all()  # PIL's convert: all black
    assert (pixels["wide.tif"][..., 1] == np.round((wide + 2) / 8 * 255)).all()  # its real range
    assert ds.image_path(ds[0]).read_bytes() == (photos / "deep.png").read_bytes()  # stored as given
    (skipped,) = ds.meta["skipped"]
    assert skipped["image"] == "nan.tif" and "NaN" in skipped["reason"]
