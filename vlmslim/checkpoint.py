"""Writing checkpoints: `save_verified` is the one way a step's output reaches its final name.

A vlmslim checkpoint is a `save_pretrained` directory plus `vlmslim.json` (the manifest: base model,
ordered steps, architecture, census, sizes, versions) and a model-card `README.md`. Every step (prune,
quantize, recover) ends in `save_verified`: write into a staging dir, reload it through
`vlmslim.loading.load_model` in eval mode, compare logits on a fixed input, let the step add its own
checks and records, and only then rename the staging dir to `out`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from vlmslim.census import census
from vlmslim.errors import ModelLoadError
from vlmslim.families import get_family
from vlmslim.inputs import fixed_inputs
from vlmslim.io import atomic_dir, dir_size, write_json
from vlmslim.loading import load_model
from vlmslim.manifest import (MANIFEST, git_revision, library_versions, manifest_problem, model_card, now_utc,
                              read_manifest)

logger = logging.getLogger(__name__)


def save_checkpoint(model, processor, out: str | os.PathLike, manifest: dict, overwrite: bool = False) -> Path:
    """Write model + processor + manifest + model card atomically to `out` (no reload check: steps use
    `save_verified`)."""
    with atomic_dir(out, overwrite) as staging:
        write_checkpoint(model, processor, staging, manifest)
    return Path(out)


def write_checkpoint(model, processor, directory: str | os.PathLike, manifest: dict) -> Path:
    """Write model + processor + manifest + model card into `directory` (created if missing), filling the
    manifest's family, census, versions, revision, time and size."""
    problem = manifest_problem(manifest)
    if problem:  # before anything is written: a bare {} would fail later as KeyError 'base'
        raise ValueError(f"not a vlmslim manifest ({problem}): build one with "
                         "vlmslim.manifest.new_manifest(source, model.config), and add a step's record with "
                         "that step's record_step")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if processor is not None:
        processor.save_pretrained(directory)
    return finish_checkpoint(model, directory, manifest)


def finish_checkpoint(model, directory: Path, manifest: dict) -> Path:
    """Manifest + model card next to weights/config/processor files already in `directory`. `model` may be an
    empty (meta) skeleton of the saved shapes and dtypes (streaming pruning): only its census is read."""
    family = get_family(model)
    manifest = dict(manifest)
    manifest["family"] = family.model_type
    manifest["census"] = census(model)
    manifest["library_versions"] = library_versions()
    manifest["vlmslim_git_revision"] = git_revision()
    manifest["created"] = now_utc()
    manifest["bytes_on_disk"] = dir_size(directory)  # weights + processor, before the manifest/card
    write_json(directory / MANIFEST, manifest)
    (directory / "README.md").write_text(model_card(manifest))
    return directory


@torch.no_grad()
def reference_logits(model, processor=None, seed: int = 0) -> torch.Tensor:
    """Logits (float32, CPU) on the fixed input the reload check uses."""
    inputs = fixed_inputs(model, processor, seed=seed)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return model.eval()(**inputs).logits.float().cpu()


def compare_logits(got: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> float:
    """Max |got - expected|; ModelLoadError when the shapes differ or it exceeds `atol` (NaN included)."""
    if got.shape != expected.shape:
        raise ModelLoadError(f"reloaded {what} gives logits of shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    diff = (got - expected).abs().max().item()
    if not diff <= atol:  # `not <=` also catches NaN
        raise ModelLoadError(f"reloaded {what} differs from the saved model: max |Δlogit| = {diff:.3g} > {atol:g}")
    return diff


def verify_reload(out: str | os.PathLike, expected: torch.Tensor, atol: float = 1e-5, device: str = "cpu") -> float:
    """Reload `out` in eval mode and compare its logits with `expected`; returns the max abs difference."""
    model, processor = load_model(out, device=device)
    diff = compare_logits(reference_logits(model, processor), expected, atol, str(out))
    logger.info("reload check of %s: max |Δlogit| = %.3g", out, diff)
    return diff


# (staging dir, reloaded model, in-memory logits, manifest) -> manifest updates; raises to refuse the output.
ReloadCheck = Callable[[Path, nn.Module, torch.Tensor, dict], dict]


def save_verified(model: nn.Module, processor, out: str | os.PathLike, manifest: dict, *, atol: float,
                  rtol: float = 0.0, device: str = "cpu", overwrite: bool = False, check: ReloadCheck | None = None,
                  card: Callable[[dict], str] | None = None) -> dict:
    """Save atomically to `out`, reload in eval mode, compare logits with the in-memory model's within
    `atol + rtol * max(1, max|logit|)`, run the step's own `check`, and write the final manifest (+ `card`
    section). Returns the final manifest; the last step's record gets `reload_max_abs_diff`.

    The in-memory logits are taken *after* saving: on a CPU the first 4-bit forward repacks bitsandbytes
    weights in place, so a quantized model must be saved before it ever runs. Nothing appears under `out`
    unless every check passed.
    """
    with atomic_dir(out, overwrite) as staging:
        write_checkpoint(model, processor, staging, manifest)
        expected = reference_logits(model, processor)
        tol = atol + rtol * max(1.0, expected.abs().max().item())
        reloaded, reloaded_processor = load_model(staging, device=device)
        diff = compare_logits(reference_logits(reloaded, reloaded_processor), expected, tol, str(out))
        saved = read_manifest(staging)
        saved["steps"][-1]["reload_max_abs_diff"] = diff
        if check is not None:
            saved.update(check(staging, reloaded, expected, saved))
        del reloaded
        write_json(staging / MANIFEST, saved)
        (staging / "README.md").write_text(model_card(saved) + (card(saved) if card else ""))
    logger.info("saved %s (reload max |Δlogit| = %.3g)", out, diff)
    return saved
