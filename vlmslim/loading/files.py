"""Weights files checked by their headers alone: no torch, no transformers, no tensor data read.

`load_model` calls `check_weight_files` before transformers sees a directory, and `vlmslim inspect`
calls it without importing torch at all.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from vlmslim.errors import ModelLoadError

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_weight_files(src: str | os.PathLike) -> list[Path]:
    """The *.safetensors files of a local model dir, each with a header that fits its file size.

    Refuses pickle-only checkpoints (`pytorch_model.bin`: loading one runs arbitrary code) and truncated
    or corrupt safetensors files, naming the file."""
    root = Path(src)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in root.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise ModelLoadError(f"{src} holds only pickle weights ({', '.join(pickles[:3])}); vlmslim loads "
                                 "safetensors only (a pickle can run code): convert with save_pretrained "
                                 "(safe_serialization=True)")
        raise ModelLoadError(f"{src} has no *.safetensors weights")
    for f in files:
        problem = _safetensors_problem(f)
        if problem:
            raise ModelLoadError(f"{f} is not a complete safetensors file ({problem}); re-download or re-save it")
    return files


def _safetensors_problem(path: Path) -> str | None:
    """None when the header parses and its tensors end exactly at the end of the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"header of {n} bytes in a {size}-byte file"
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "unreadable header"
    if not isinstance(header, dict):
        return "unreadable header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    data = size - 8 - n
    if max(ends, default=0) != data:
        return f"tensors need {max(ends, default=0):,} data bytes, the file has {data:,}"
    return None
