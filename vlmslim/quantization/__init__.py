"""Quantization with bitsandbytes: recipes (int8, nf4, fp4) × targets (language, vision, all).

    from vlmslim.quantization import QuantSpec, load_quantized, make_recipe, quantize, quantize_model
    quantize("ckpt/pruned", "ckpt/pruned-nf4", QuantSpec(make_recipe("nf4", double_quant=True), target="all"))
    model, processor = load_quantized("ckpt/pruned", "nf4")   # quantize at load, nothing written
"""

from vlmslim.quantization.quantize import (QuantSpec, Quantized, as_spec, check_census, is_quantized, quantize_model,
                                           refuse_quantized)
from vlmslim.quantization.recipes import (RECIPES, FourBitRecipe, Int8Recipe, Recipe, make_recipe,
                                          recipe_from_bits)
from vlmslim.quantization.step import load_quantized, quantize
from vlmslim.quantization.sizes import expected_bytes, param_inventory, safetensors_bytes, sqnr_db
from vlmslim.quantization.targets import DEFAULT_TARGET, TARGETS, Target, check_shapes, resolve_target

__all__ = [
    "DEFAULT_TARGET", "RECIPES", "TARGETS", "FourBitRecipe", "Int8Recipe", "QuantSpec", "Quantized", "Recipe",
    "Target", "as_spec", "check_census", "check_shapes", "expected_bytes", "is_quantized", "load_quantized",
    "make_recipe", "param_inventory", "quantize", "quantize_model", "recipe_from_bits",
    "refuse_quantized", "resolve_target", "safetensors_bytes", "sqnr_db",
]
