"""`vlmslim quantize`: checkpoint in, quantized checkpoint out; and quantize-at-load.

Load, quantize in memory, `save_verified` (atomic save -> reload -> logits check), with this step's own
checks on the reload: the same Linear precisions layer by layer, the saved bytes against the analytic
expectation, and the logit SQNR against the float input model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from vlmslim.census import linear_layers
from vlmslim.checkpoint import reference_logits, save_verified
from vlmslim.errors import QuantizationError
from vlmslim.io import holds_output
from vlmslim.loading import empty_model, is_random, load_config, load_model, resolve_device, resolve_source
from vlmslim.manifest import new_manifest, read_manifest
from vlmslim.quantization.quantize import QuantSpec, as_spec, quantize_model, refuse_quantized
from vlmslim.quantization.sizes import expected_bytes, param_inventory, safetensors_bytes, sqnr_db
from vlmslim.quantization.targets import check_shapes, resolve_target

logger = logging.getLogger(__name__)

RELOAD_RTOL = 1e-4  # reload must reproduce the in-memory logits; a wrong layer moves them by ~1e-1


def load_quantized(src, quant, dtype=None, device: str = "cpu"):
    """(model, processor) quantized at load, nothing written. Float weights load on the CPU and each target
    layer is quantized straight onto `device`, so the device only ever holds the quantized model (random
    architecture-only models are built on `device` directly)."""
    spec = as_spec(quant)
    if device == "auto":
        raise QuantizationError("quantize-at-load needs one device ('cpu', 'cuda', 'cuda:1'), not 'auto'")
    if (why := spec.recipe.device_error(torch.device(device))) is not None:
        raise QuantizationError(why)  # before loading anything
    src = resolve_source(src)
    if not is_random(src):
        refuse_quantized(load_config(src), src)
    model, processor = load_model(src, dtype=dtype, device=device if is_random(src) else "cpu")
    quantize_model(model, spec, device)
    return model.eval(), processor


@holds_output
def quantize(src, out, quant, device: str = "cpu", overwrite: bool = False) -> dict:
    """The `vlmslim quantize` step: load, quantize, save atomically, verify the reload; returns the
    manifest's `quantization` record (recipe, target, expected vs measured bytes, SQNR, reload check).
    `device` "auto": cuda if available, else cpu (quantization needs one device)."""
    device = resolve_device(device)
    spec = as_spec(quant)
    if (why := spec.recipe.device_error(torch.device(device))) is not None:
        raise QuantizationError(why)  # before loading anything
    src = resolve_source(src)
    config = load_config(src)
    refuse_quantized(config, src)
    prior = read_manifest(src) if os.path.isdir(src) else None
    if prior is None or prior.get("stock_loadable", True):
        _precheck(config, spec)
    model, processor = load_model(src, device=device)
    fp_logits = reference_logits(model, processor)
    inventory = param_inventory(model)
    done = quantize_model(model, spec, device)
    expected = expected_bytes(inventory, done.recipe, done.target)
    record = {"recipe": done.recipe.params(), "target": done.target.to_dict(), "expected_bytes": expected}
    manifest = new_manifest(src, config, prior, seed=(prior or {}).get("seed"))
    manifest["steps"].append({"kind": "quantize", "method": done.recipe.name,
                              "params": {**done.recipe.params(), "target": spec.target,
                                         "keep": list(spec.keep), "also": list(spec.also)}})
    manifest["quantization"] = record
    layers = linear_layers(model)

    def check(staging: Path, reloaded: nn.Module, q_logits: torch.Tensor, saved: dict) -> dict:
        _check_precisions(linear_layers(reloaded), layers)
        measured = safetensors_bytes(staging)
        _compare_bytes(expected, measured)
        return {"quantization": {**record, "reload_max_abs_diff": saved["steps"][-1]["reload_max_abs_diff"],
                                 "sqnr_db": sqnr_db(fp_logits, q_logits), "measured_bytes": measured}}

    saved = save_verified(model, processor, out, manifest, atol=0.0, rtol=RELOAD_RTOL, device=device,
                          overwrite=overwrite, check=check, card=quantization_card)
    record = saved["quantization"]
    logger.info("wrote %s: %s on %s, SQNR %.1f dB vs the input model", out, done.recipe.name,
                done.target.name, record["sqnr_db"])
    return record


def _precheck(config, spec: QuantSpec) -> None:
    """Resolve the target and check shapes on a weightless skeleton, so a typo in --keep or a bad width
    fails in a second, not after loading 14 GB. (Pruned non-stock shapes are checked after loading.)"""
    skeleton = empty_model(config)
    target = resolve_target(skeleton, spec.target, spec.keep, spec.also)
    check_shapes(skeleton, target, spec.recipe)


def _check_precisions(got: dict, layers: dict) -> None:
    if got != layers:
        diff = [f"{n}: {layers.get(n)} -> {got.get(n)}" for n in sorted(set(got) | set(layers))
                if got.get(n) != layers.get(n)]
        raise QuantizationError(f"the reloaded checkpoint has other layer precisions: {', '.join(diff[:5])}")


def _compare_bytes(expected: dict, measured: dict) -> None:
    # Only the JSON blobs of double-quant layers have a data-dependent length (the float offset).
    slack = 3 * expected["quantized_layers"]
    off = measured["payload"] - expected["total"]
    if abs(off) > slack:
        logger.warning("saved tensors take %d bytes, the analytic expectation is %d (off by %+d)",
                       measured["payload"], expected["total"], off)


def quantization_card(manifest: dict) -> str:
    """The model-card section: recipe, target, what stayed float, bytes and quality on the fixed input."""
    q = manifest["quantization"]
    t, e, m = q["target"], q["expected_bytes"], q["measured_bytes"]
    comps = census_line(manifest["census"])
    return "\n".join([
        "", "## Quantization", "",
        f"Recipe `{q['recipe']['name']}` {q['recipe']}; target `{t['name']}` (keep {t['keep']}, also {t['also']}): "
        f"{len(t['quantized_modules'])} Linear layers quantized; config skip list {t['skip_modules']}.",
        f"Linear precisions per component: {comps}.",
        f"Tensor bytes on disk {m['payload']:,} (analytic {e['total']:,}); files {m['files']:,}.",
        f"Logit SQNR vs the input model on the fixed input: {q['sqnr_db']:.1f} dB; "
        f"reload max |Δlogit| {q['reload_max_abs_diff']:.3g}.", ""])


def census_line(c: dict) -> str:
    return "; ".join(f"{comp} {dict(v['linear'])}" for comp, v in c["components"].items() if v["linear"])
