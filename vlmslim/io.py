"""Atomic output directories and small file helpers shared by every step.

An artifact is built in `<out>.partial-<pid>/` and renamed to `<out>` only when complete, so an
interrupted step never leaves a half-written directory under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from vlmslim.errors import OutputExistsError

logger = logging.getLogger(__name__)


def check_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early (before any work) when `out` exists and may not be replaced."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} exists and is not a directory")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False):
    """Yield a fresh staging dir; on success it replaces `out`, on any exception it is removed.

    The old `out` is moved aside (not deleted) until the new one is in place, so a failure during
    the swap loses neither.
    """
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f"{out.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    done = False
    try:
        yield staging
        done = True
    finally:
        if not done:  # an exception or Ctrl-C inside the block: nothing under any name survives
            shutil.rmtree(staging, ignore_errors=True)
    backup = None
    if out.exists():
        backup = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(backup)
    staging.rename(out)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    logger.debug("wrote %s", out)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    Path(path).write_text(json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_size(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
