"""`vlmslim data ...`: evaluation sets onto disk."""

from __future__ import annotations

from pathlib import Path

import click

from vlmslim import data as _data
from vlmslim.cli import cli, handle_errors


# --- data: evaluation sets onto disk (vlmslim.data) ---------------------------------------------


def _echo_dataset(path: Path, out: Path) -> None:
    ds = _data.load(path)  # the absolute path the library returns: `--out .` is renamed under our cwd
    skipped = ds.meta.get("counts", {}).get("skipped", 0)
    click.echo(f"{out}: {len(ds)} {ds.task} samples ({skipped} skipped)")


@cli.group()
def data() -> None:
    """Get evaluation sets onto disk once; every later step reads them offline.

    \b
    Layout: DIR/images/, DIR/samples.jsonl, DIR/meta.json (+ DIR/annotations.json for captions).
    """


@data.command("download")
# NAME is checked by the library, not click.Choice, so an unknown name is a one-line error like the
# others; the metavar still lists the registry.
@click.argument("name", metavar="{" + ",".join(sorted(_data.SOURCES)) + "}")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset directory to create.")
@click.option("--split", default=None, help="Source split [default: coco-captions val, textvqa validation, vqaonline test].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Seeded random subset of N rows (not the first N).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --limit subset.")
@click.option("--source", default=None, help="Hub id or local copy (dir, parquet/json files) [default: the registry's hub id].")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) to pin.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@handle_errors
def data_download(name, out, split, limit, seed, source, revision, overwrite) -> None:
    """Download a registered evaluation set into the local layout.

    \b
    Example:
      vlmslim data download coco-captions --out data/coco-val500 --limit 500 --seed 0
    """
    path = _data.download(name, out, split=split, limit=limit, seed=seed, source=source, revision=revision,
                          overwrite=overwrite)
    _echo_dataset(path, out)


@data.command("import")
@click.argument("images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--captions", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="COCO captions .json (images + annotations) or .csv with image,caption columns.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@handle_errors
def data_import(images_dir, captions, out, overwrite) -> None:
    """Import your own images and captions as a caption set.

    \b
    Example:
      vlmslim data import photos/ --captions photos/captions.csv --out data/my-photos
    """
    _echo_dataset(_data.import_captions(images_dir, captions, out, overwrite=overwrite), out)


@data.command("synthetic")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset directory to create.")
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of scenes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Scene seed (use different seeds for train and eval).")
@click.option("--size", type=click.IntRange(min=32), default=64, show_default=True, help="Image side in pixels.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@handle_errors
def data_synthetic(out, n, seed, size, overwrite) -> None:
    """Render the offline shapes-captioning set (same seed -> byte-identical files).

    \b
    Example:
      vlmslim data synthetic --out data/shapes-eval --n 200 --seed 1
    """
    _echo_dataset(_data.make_synthetic(out, n=n, seed=seed, size=size, overwrite=overwrite), out)
