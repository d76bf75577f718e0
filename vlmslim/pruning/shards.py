"""Safetensors shards read and written a few tensors at a time, for streaming pruning.

`SourceShards` maps every `model.state_dict()` key of a model to the checkpoint file and key that hold
it (transformers' own key conversion, as `from_pretrained` renames) and reads tensors lazily with
`safetensors.safe_open`, one file handle per call, so no mapping outlives the tensors it produced.

`ShardWriter` writes what `save_pretrained` would write for a model whose shapes are known up front (an
empty skeleton cut to the plan): the same tensor names (tied weights removed, weight conversion
reverted), the same shards (`split_torch_state_dict_into_shards`, same `max_shard_size`), the same index
file, and byte for byte the same safetensors files — the header is laid out as safetensors' own writer
lays it out, then each tensor's bytes go to their offset whenever the tensor is ready.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from torch import nn
from transformers.core_model_loading import revert_weight_conversion
from transformers.modeling_utils import remove_tied_weights_from_state_dict

from vlmslim.errors import ModelLoadError, PruningError
from vlmslim.loading.files import check_weight_files
from vlmslim.loading.quantized import key_renamer

logger = logging.getLogger(__name__)

SAVE_MAX_SHARD_SIZE = "50GB"  # transformers 5's save_pretrained default, which the in-memory prune uses
INDEX_NAME = "model.safetensors.index.json"
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
# safetensors (0.8) writes tensors by dtype in this order, then by name (measured: tests pin the bytes)
_DTYPE_ORDER = ["U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16", "F8_E4M3", "F8_E5M2", "I8",
                "U8", "BOOL"]
_HEADER_ALIGN = 8  # the JSON header is padded with spaces to a multiple of 8 bytes


class SourceShards:
    """The safetensors files of a checkpoint dir, keyed by `model.state_dict()` names (read lazily)."""

    def __init__(self, src: str | os.PathLike, model: nn.Module):
        rename = key_renamer(model)
        self.where: dict[str, tuple[Path, str]] = {}  # model key -> (file, key in the file)
        self.dtypes: dict[str, str] = {}
        for f in check_weight_files(src):
            with safe_open(f, framework="pt") as s:
                for key in s.keys():
                    name = rename(key)
                    self.where[name] = (f, key)
                    self.dtypes[name] = s.get_slice(key).get_dtype()

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors `names` (model keys), opening each file once and closing it before returning."""
        missing = [n for n in names if n not in self.where]
        if missing:
            raise ModelLoadError(f"the checkpoint has no tensor for {missing[:3]}")
        by_file = defaultdict(list)
        for n in names:
            by_file[self.where[n][0]].append(n)
        out = {}
        for f, group in by_file.items():
            with safe_open(f, framework="pt") as s:
                for n in group:
                    out[n] = s.get_tensor(self.where[n][1]).clone()  # own memory, not a view of the mapping
        return out


def _header(tensors: dict[str, tuple[str, list[int], int]], metadata: dict) -> tuple[bytes, dict[str, int]]:
    """safetensors' header for {name: (dtype, shape, nbytes)} and each tensor's data offset."""
    order = sorted(tensors, key=lambda n: (_DTYPE_ORDER.index(tensors[n][0]), n))
    header, offsets, at = {"__metadata__": metadata}, {}, 0
    for n in order:
        dtype, shape, nbytes = tensors[n]
        header[n] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + nbytes]}
        offsets[n] = at
        at += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % _HEADER_ALIGN)
    return len(raw).to_bytes(8, "little") + raw, offsets


def saved_keys(skeleton: nn.Module) -> list[str]:
    """The `state_dict` keys `save_pretrained` writes (tied copies left out), in model-key form."""
    return list(remove_tied_weights_from_state_dict(skeleton.state_dict(), skeleton))


class ShardWriter:
    """Pre-sized output shards of `skeleton` (an empty model with the output's shapes and dtypes) in
    `directory`; `write(model_key, tensor)` puts one tensor in place. `model_keys()` lists what must be
    written (tied copies are not), `close()` checks that every one was."""

    def __init__(self, skeleton: nn.Module, directory: str | os.PathLike, max_shard_size: str = SAVE_MAX_SHARD_SIZE):
        state = remove_tied_weights_from_state_dict(skeleton.state_dict(), skeleton)
        by_id = {id(t): k for k, t in state.items()}
        saved = revert_weight_conversion(skeleton, state)  # model keys -> the keys save_pretrained writes
        self.saved_key = {by_id[id(t)]: k for k, t in saved.items()}
        split = split_torch_state_dict_into_shards(saved, filename_pattern="model{suffix}.safetensors",
                                                   max_shard_size=max_shard_size)
        directory = Path(directory)
        self._slots: dict[str, tuple[Path, int, torch.dtype, torch.Size]] = {}  # saved key -> file, offset, ...
        for filename, names in split.filename_to_tensors.items():
            spec = {n: (_DTYPES[saved[n].dtype], list(saved[n].shape), saved[n].numel() * saved[n].element_size())
                    for n in names}
            head, offsets = _header(spec, {"format": "pt"})
            path = directory / filename
            with open(path, "wb") as f:
                f.write(head)
                f.truncate(len(head) + sum(s[2] for s in spec.values()))
            for n in names:
                self._slots[n] = (path, len(head) + offsets[n], saved[n].dtype, saved[n].shape)
        if split.is_sharded:
            index = {"metadata": {"total_parameters": skeleton.num_parameters(), **split.metadata},
                     "weight_map": split.tensor_to_filename}
            (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        self._todo = set(self._slots)
        self._handles: dict[Path, object] = {}

    def model_keys(self) -> list[str]:
        return list(self.saved_key)

    def write(self, model_key: str, tensor: torch.Tensor) -> None:
        name = self.saved_key[model_key]
        path, offset, dtype, shape = self._slots[name]
        if tensor.dtype != dtype or tensor.shape != shape:
            raise PruningError(f"internal: {model_key} is {tuple(tensor.shape)} {tensor.dtype}, the planned output "
                               f"{tuple(shape)} {dtype}")
        if name not in self._todo:
            raise PruningError(f"internal: {model_key} written twice")
        f = self._handles.get(path) or self._handles.setdefault(path, open(path, "r+b"))
        f.seek(offset)
        f.write(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().data)  # raw little-endian bytes
        self._todo.discard(name)

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()
        if self._todo:
            raise PruningError(f"internal: {len(self._todo)} output tensors never written, e.g. {sorted(self._todo)[:3]}")
