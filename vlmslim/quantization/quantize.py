"""The quantization step: replace exact `nn.Linear` layers by bitsandbytes modules in memory, prove it with
the census, save a checkpoint stock `from_pretrained` reloads, and check that reload.

In-memory replacement is the one mechanism for every input: hub/HF dirs and pruned checkpoints whose
shapes `from_pretrained` cannot rebuild alike. The saved config carries a `BitsAndBytesConfig` whose skip
list reproduces exactly the same modules on a stock reload (checked by reloading).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from vlmslim.census import linear_layers
from vlmslim.errors import QuantizationError
from vlmslim.io import atomic_dir, check_output_dir, write_json
from vlmslim.quantization.recipes import QUANT_KINDS, FourBitRecipe, Int8Recipe, Recipe, make_recipe
from vlmslim.quantization.sizes import expected_bytes, param_inventory, safetensors_bytes, sqnr_db
from vlmslim.quantization.targets import DEFAULT_TARGET, TARGETS, Target, check_shapes, resolve_target

logger = logging.getLogger(__name__)

_BNB_CLASSES = ("Linear4bit", "Linear8bitLt")
RELOAD_RTOL = 1e-4  # reload must reproduce the in-memory logits; a wrong layer moves them by ~1e-1


@dataclass(frozen=True)
class QuantSpec:
    """Everything one quantization step needs: a recipe and where to apply it."""

    recipe: Recipe
    target: str = DEFAULT_TARGET
    keep: tuple[str, ...] = field(default_factory=tuple)
    also: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not isinstance(self.recipe, (Int8Recipe, FourBitRecipe)):
            raise ValueError(f"recipe must be a vlmslim.quantization recipe, got {self.recipe!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target (--target) must be one of {sorted(TARGETS)}, got {self.target!r}")
        object.__setattr__(self, "keep", tuple(self.keep))
        object.__setattr__(self, "also", tuple(self.also))


def as_spec(quant) -> QuantSpec:
    """A QuantSpec from a spec, a recipe, or a recipe name ("nf4"; default target)."""
    if isinstance(quant, QuantSpec):
        return quant
    if isinstance(quant, str):
        return QuantSpec(make_recipe(quant))
    return QuantSpec(quant)


@dataclass(frozen=True)
class Quantized:
    """What `quantize_model` did: the resolved recipe (compute dtype filled in) and target."""

    recipe: Recipe
    target: Target


def is_quantized(model_or_config) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, "quantization_config", None) is not None:
        return True
    return isinstance(model_or_config, nn.Module) and any(
        type(m).__name__ in _BNB_CLASSES for m in model_or_config.modules())


def refuse_quantized(model_or_config, what: str = "the model") -> None:
    if not is_quantized(model_or_config):
        return
    qc = getattr(getattr(model_or_config, "config", model_or_config), "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    method = getattr(method, "value", method) or "bitsandbytes"
    raise QuantizationError(f"{what} is already quantized ({method}); quantize its unquantized source instead")


def check_census(model: nn.Module, target: Target, recipe: Recipe) -> None:
    """Every target layer is `recipe.kind`, every other Linear is float — else fail listing offenders."""
    layers = linear_layers(model)
    want = set(target.quantize)
    missed = [f"{n} ({layers.get(n)})" for n in target.quantize if layers.get(n) != recipe.kind]
    extra = [f"{n} ({k})" for n, k in layers.items() if n not in want and k in QUANT_KINDS]
    if missed or extra:
        raise QuantizationError(
            f"the census does not match target {target.name!r}: left out {len(missed)} "
            f"({', '.join(missed[:5])}), took in {len(extra)} ({', '.join(extra[:5])})")


def quantize_model(model: nn.Module, quant="nf4", device=None) -> Quantized:
    """Quantize `model` in place onto `device` (default: where it is); returns the resolved recipe/target."""
    spec = as_spec(quant)
    refuse_quantized(model)
    recipe = spec.recipe.resolved(model.dtype)
    target = resolve_target(model, spec.target, spec.keep, spec.also)
    if isinstance(recipe, FourBitRecipe):
        check_shapes(model, target, recipe)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if device.type == "meta":
        raise QuantizationError("cannot quantize on the meta device; load real weights first")
    logger.info("quantizing %d Linear layers (target %s) with %s on %s", len(target.quantize), target.name,
                recipe.params(), device)
    for name in tqdm(target.quantize, desc=f"quantize {recipe.name}", leave=False, disable=None):
        model.set_submodule(name, recipe.quantize_linear(model.get_submodule(name), device))
    if any(p.device.type != device.type for p in model.parameters()):
        model.to(device)  # the float remainder (embeddings, norms, skipped layers)
    check_census(model, target, recipe)
    # Stock from_pretrained rebuilds the same modules from this (save_pretrained writes it to config.json).
    model.config.quantization_config = recipe.bnb_config(target.skip_modules)
    return Quantized(recipe, target)


def load_quantized(src, cls, config, manifest, quant, dtype=None, device: str = "cpu") -> nn.Module:
    """Quantize-at-load for `vlmslim.load_model(src, quant=...)`: float weights load on the CPU, each target
    layer is quantized straight onto `device` (the device only ever holds the quantized model)."""
    from vlmslim.checkpoint import load_weights

    spec = as_spec(quant)
    refuse_quantized(config, str(src))
    if device == "auto":
        raise QuantizationError("quantize-at-load needs one device ('cpu', 'cuda', 'cuda:1'), not 'auto'")
    model = load_weights(src, cls, config, manifest, dtype, "cpu")
    quantize_model(model, spec, device)
    return model.eval()


def quantize(src, out, quant, device: str = "cpu", overwrite: bool = False) -> dict:
    """The `vlmslim quantize` step: load, quantize, save atomically, verify the reload; returns the
    manifest's `quantization` record (recipe, target, expected vs measured bytes, SQNR, reload check)."""
    from vlmslim.checkpoint import (load_config, load_model, model_card, new_manifest, read_manifest,
                                    reference_logits, resolve_source, save_checkpoint)

    spec = as_spec(quant)
    check_output_dir(out, overwrite)  # before any work
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

    with atomic_dir(out, overwrite) as tmp:
        # Save before any forward: on CPU the first 4-bit forward repacks the weights in place.
        save_checkpoint(model, processor, tmp, manifest, overwrite=True)
        q_logits = reference_logits(model, processor)
        record["reload_max_abs_diff"] = _check_reload(tmp, linear_layers(model), q_logits, device)
        record["sqnr_db"] = sqnr_db(fp_logits, q_logits)
        measured = safetensors_bytes(tmp)
        record["measured_bytes"] = measured
        _compare_bytes(expected, measured)
        saved = read_manifest(tmp)
        saved["quantization"] = record
        write_json(tmp / "vlmslim.json", saved)
        (tmp / "README.md").write_text(model_card(saved) + quantization_card(saved))
    logger.info("wrote %s: %s on %s, SQNR %.1f dB vs the input model", out, done.recipe.name,
                done.target.name, record["sqnr_db"])
    return record


def _precheck(config, spec: QuantSpec) -> None:
    """Resolve the target and check shapes on a weightless skeleton, so a typo in --keep or a bad width
    fails in a second, not after loading 14 GB. (Pruned non-stock shapes are checked after loading.)"""
    from accelerate import init_empty_weights

    from vlmslim.checkpoint import model_class

    with init_empty_weights():
        skeleton = model_class(config)._from_config(config)
    target = resolve_target(skeleton, spec.target, spec.keep, spec.also)
    if isinstance(spec.recipe, FourBitRecipe):
        check_shapes(skeleton, target, spec.recipe)


def _check_reload(path, layers: dict, logits: torch.Tensor, device) -> float:
    """Reload in eval mode through `load_model`: same Linear precisions, same logits."""
    from vlmslim.checkpoint import load_model, reference_logits

    reloaded, processor = load_model(path, device=device)
    got = linear_layers(reloaded)
    if got != layers:
        diff = [f"{n}: {layers.get(n)} -> {got.get(n)}" for n in sorted(set(got) | set(layers))
                if got.get(n) != layers.get(n)]
        raise QuantizationError(f"the reloaded checkpoint has other layer precisions: {', '.join(diff[:5])}")
    again = reference_logits(reloaded, processor)
    diff = (again - logits).abs().max().item()
    if not diff <= RELOAD_RTOL * max(1.0, logits.abs().max().item()):  # `not <=` catches NaN
        raise QuantizationError(f"the reloaded checkpoint gives other logits (max |Δ| = {diff:.3g})")
    return diff


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


