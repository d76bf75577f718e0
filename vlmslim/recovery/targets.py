"""Teacher targets: the teacher's greedy answer to the pinned task prompt, for every training image.

Any `vlmslim data` directory works, labels or not: the student learns what the teacher says. The
answers (token ids, EOS included, so the student learns where to stop) are cached once per (data
content, teacher files, answer cap) under the cache dir, so a second recovery from the same teacher on
the same data (another method, a resume) does not generate them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlmslim.data import LocalDataset
from vlmslim.errors import RecoveryError
from vlmslim.families import first_param_device, get_family
from vlmslim.inputs import processor_inputs
from vlmslim.io import sha256_file
from vlmslim.prompts import pinned_instruction

logger = logging.getLogger(__name__)

FORMAT = "vlmslim-teacher-targets/1"
# Pinned decoding: explicit neutral values, so a generation_config.json cannot change the targets.
GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


@dataclass(frozen=True)
class Target:
    id: str
    answer_ids: list[int]  # the teacher's generated tokens, up to and including its first EOS
    answer: str


def default_cache_dir() -> Path:
    return Path(os.environ.get("VLMSLIM_CACHE") or Path.home() / ".cache" / "vlmslim")


NOT_IDENTITY = ("README.md", "vlmslim.json", "loss.jsonl", "loss.png")  # records about a model, not the model


def model_sha256(model_dir: str | os.PathLike) -> str:
    """sha256 over (file name, file sha256) of every file of a checkpoint dir that can change its answers:
    weights, config, generation config, processor, tokenizer, chat template (not the manifest, the model
    card or loss logs, which carry timestamps). The teacher's identity in the targets cache key."""
    root = Path(model_dir)
    if not list(root.glob("*.safetensors")):
        raise RecoveryError(f"{root} has no *.safetensors weights to hash")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name not in NOT_IDENTITY)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def cache_key(data_sha256: str, teacher_sha256: str, max_new_tokens: int, family: str) -> str:
    blob = json.dumps({"format": FORMAT, "data": data_sha256, "teacher": teacher_sha256,
                       "max_new_tokens": max_new_tokens, "family": family, "decoding": GREEDY}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def teacher_targets(teacher, processor, dataset: LocalDataset, key: str, *, cache_dir: Path, batch_size: int,
                    max_new_tokens: int, progress: bool = True) -> list[Target]:
    """One `Target` per sample of `dataset` (in its order), from the cache when it holds this key."""
    path = Path(cache_dir) / "teacher-targets" / f"{key[:32]}.jsonl"
    cached = _read_cache(path, dataset)
    if cached is not None:
        logger.info("teacher targets from the cache %s (%d answers)", path, len(cached))
        return cached
    targets = generate_targets(teacher, processor, dataset, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               progress=progress)
    _write_cache(path, key, targets)
    return targets


@torch.inference_mode()
def generate_targets(teacher, processor, dataset: LocalDataset, *, batch_size: int, max_new_tokens: int,
                     progress: bool = True) -> list[Target]:
    """Greedy answers of `teacher` to each sample's pinned instruction, batched with left padding."""
    get_family(teacher)  # an unsupported family fails before any generation
    tokenizer = getattr(processor, "tokenizer", processor)
    eos = _eos_ids(teacher, tokenizer)
    device = first_param_device(teacher)
    suppress = placeholder_ids(teacher.config)
    out: list[Target] = []
    samples = dataset.samples
    for start in tqdm(range(0, len(samples), batch_size), disable=not progress, desc="teacher targets", unit="batch"):
        batch = samples[start:start + batch_size]
        inputs = processor_inputs(teacher, processor, [dataset.open_image(s) for s in batch],
                                  [pinned_instruction(s) for s in batch])
        inputs = {k: v.to(device) for k, v in inputs.items()}
        generated = teacher.generate(**inputs, max_new_tokens=max_new_tokens, **GREEDY, suppress_tokens=suppress,
                                     pad_token_id=tokenizer.pad_token_id)[:, inputs["input_ids"].shape[1]:]
        for s, row in zip(batch, generated.tolist()):
            ids = _until_eos(row, eos)
            out.append(Target(s.id, ids, tokenizer.decode(ids, skip_special_tokens=True).strip()))
    empty = sum(not t.answer_ids for t in out)
    if empty:
        logger.warning("the teacher's answer is empty for %d of %d samples", empty, len(out))
    return out


def placeholder_ids(config) -> list[int]:
    """Image/video placeholder ids: never part of an answer (a sequence with one more image token than it
    has images is refused by the forward). A trained teacher never emits them; a random one might."""
    keys = ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return sorted({v for k in keys if isinstance(v := getattr(config, k, None), int)})


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set() if eos is None else set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def _until_eos(row: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in eos:
            return row[:i + 1]
    return row  # the answer hit max_new_tokens: no EOS to learn


def _read_cache(path: Path, dataset: LocalDataset) -> list[Target] | None:
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    except (IndexError, json.JSONDecodeError):
        logger.warning("ignoring the unreadable targets cache %s", path)
        return None
    if header.get("format") != FORMAT or [r["id"] for r in rows] != [s.id for s in dataset.samples]:
        logger.warning("ignoring the targets cache %s: it holds other samples", path)
        return None
    return [Target(r["id"], r["answer_ids"], r["answer"]) for r in rows]


def _write_cache(path: Path, key: str, targets: list[Target]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    lines = [json.dumps({"format": FORMAT, "key": key, "n": len(targets)})]
    lines += [json.dumps({"id": t.id, "answer_ids": t.answer_ids, "answer": t.answer}) for t in targets]
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a killed writer leaves a .tmp file, never a torn cache
    logger.info("cached %d teacher targets in %s", len(targets), path)
