"""Quantization in memory: replace exact `nn.Linear` layers by bitsandbytes modules and prove it with the
census.

In-memory replacement is the one mechanism for every input: hub/HF dirs and pruned checkpoints whose
shapes `from_pretrained` cannot rebuild alike. The config gets a `BitsAndBytesConfig` whose skip list
reproduces exactly the same modules on a stock reload (`vlmslim.quantization.step` checks it by reloading).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from vlmslim.census import QUANT_KINDS, linear_layers
from vlmslim.errors import QuantizationError
from vlmslim.quantization.recipes import RECIPE_CLASSES, Recipe, make_recipe
from vlmslim.quantization.targets import DEFAULT_TARGET, TARGETS, Target, check_shapes, resolve_target

logger = logging.getLogger(__name__)

_BNB_CLASSES = ("Linear4bit", "Linear8bitLt", "Int4WeightOnlyLinear", "Fp8WeightOnlyLinear", "Int8WeightOnlyLinear",
                "Int8DynamicLinear")


@dataclass(frozen=True)
class QuantSpec:
    """Everything one quantization step needs: a recipe and where to apply it."""

    recipe: Recipe
    target: str = DEFAULT_TARGET
    keep: tuple[str, ...] = field(default_factory=tuple)
    also: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not isinstance(self.recipe, tuple(set(RECIPE_CLASSES.values()))):
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
    check_shapes(model, target, recipe)  # a no-op for recipes that take any shape (int8)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if device.type == "meta":
        raise QuantizationError("cannot quantize on the meta device; load real weights first")
    if (why := recipe.device_error(device)) is not None:
        raise QuantizationError(why)
    logger.info("quantizing %d Linear layers (target %s) with %s on %s", len(target.quantize), target.name,
                recipe.params(), device)
    for name in tqdm(target.quantize, desc=f"quantize {recipe.name}", leave=False, disable=None):
        model.set_submodule(name, recipe.quantize_linear(model.get_submodule(name), device))
    if any(p.device.type != device.type for p in model.parameters()):
        model.to(device)  # the float remainder (embeddings, norms, skipped layers)
    check_census(model, target, recipe)
    # bnb: stock from_pretrained rebuilds the same modules from this (save_pretrained writes it to config.json);
    # int4wo / fp8 / int8wo / int8dq: a marker that makes stock loading refuse (vlmslim.load_model rebuilds it from the manifest).
    model.config.quantization_config = recipe.quantization_config(target.skip_modules)
    return Quantized(recipe, target)
