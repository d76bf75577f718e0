"""`vlmslim inspect`, `vlmslim prune`, `vlmslim quantize`: checkpoints in, checkpoints out."""

from __future__ import annotations

import click

from vlmslim.cli import (COMPUTE_DTYPES, DEFAULT_TARGET, HEAD_CRITERIA, HEAD_MODES, NEURON_CRITERIA, QUANT_TARGETS,
                         cli, handle_errors)


# --- inspect -------------------------------------------------------------------------------


@cli.command("inspect")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@handle_errors
def inspect_cmd(model: str, as_json: bool) -> None:
    """Show a checkpoint's manifest, census and key shapes (no weights are read).

    \b
    Example:
      vlmslim inspect runs/llava-glu30
      vlmslim inspect runs/llava-glu30 --json | jq .census
    """
    import json

    from vlmslim.describe import describe
    from vlmslim.cli.render import describe_text

    info = describe(model)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else describe_text(info))




# --- prune -------------------------------------------------------------------------------------


@cli.command("prune")
@click.argument("model")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory.")
@click.option("--glu", type=float, default=0.0, show_default=True,
              help="Fraction of GLU-MLP neurons removed in every decoder layer (0 <= R < 1).")
@click.option("--heads", type=float, default=0.0, show_default=True,
              help="Fraction of attention heads removed in every decoder layer (0 <= R < 1).")
@click.option("--head-mode", type=click.Choice(HEAD_MODES), default="groups", show_default=True,
              help="groups: remove whole KV groups (shrinks the KV cache); query: query heads inside each group.")
@click.option("--drop-layers", default=None, metavar="N|I,J",
              help="Drop the N most redundant decoder layers (needs --calibration) or the listed layer indices.")
@click.option("--trim-vision", is_flag=True, help="Drop vision layers after vision_feature_layer (never read).")
@click.option("--importance", type=click.Choice(NEURON_CRITERIA), default="maw", show_default=True,
              help="MLP neuron criterion (activation, hybrid need --calibration).")
@click.option("--head-importance", type=click.Choice(HEAD_CRITERIA), default="o_norm", show_default=True,
              help="Attention head criterion (activation needs --calibration).")
@click.option("--calibration", type=click.Path(), default=None, help="A `vlmslim data` directory.")
@click.option("--calibration-samples", type=int, default=32, show_default=True)
@click.option("--round-to", type=int, default=64, show_default=True, help="Kept MLP widths are multiples of this.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, cuda, cuda:1, ..., or auto (cuda if available, else cpu).")
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the calibration subset.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@handle_errors
def prune_cmd(model, out, glu, heads, head_mode, drop_layers, trim_vision, importance, head_importance, calibration,
              calibration_samples, round_to, device, seed, overwrite):
    """Structurally prune MODEL (hub id, HF dir or vlmslim checkpoint) into a new checkpoint.

    \b
    vlmslim prune llava-hf/llava-1.5-7b-hf --out ckpt/glu30-h25 --glu 0.3 --heads 0.25 --device cuda
    """
    from vlmslim.pruning.config import PruneConfig, parse_drop_layers
    from vlmslim.pruning.step import prune_checkpoint

    try:
        config = PruneConfig(glu=glu, heads=heads, head_mode=head_mode, drop_layers=parse_drop_layers(drop_layers),
                             trim_vision=trim_vision, importance=importance, head_importance=head_importance,
                             round_to=round_to, calibration=calibration, calibration_samples=calibration_samples,
                             seed=seed)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    path, manifest = prune_checkpoint(model, out, config, device=device, overwrite=overwrite)
    step = manifest["steps"][-1]
    before, after = sum(step["params_before"].values()), sum(step["params_after"].values())
    click.echo(f"{path}: {step['method']} {before:,} -> {after:,} params ({1 - after / before:.1%} removed); "
               f"stock loadable: {step['stock_loadable']}; reload max |dlogit| {step['reload_max_abs_diff']:.2g}")




# --- quantize ----------------------------------------------------------------------------------


@cli.command()
@click.argument("model")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory.")
@click.option("--bits", required=True, type=click.Choice(["8", "4"]), help="8: LLM.int8; 4: nf4 (default) or fp4.")
@click.option("--quant-type", type=click.Choice(["nf4", "fp4"]), default=None, help="4-bit data type [default: nf4].")
@click.option("--double-quant", is_flag=True, help="4-bit: quantize the per-block scales too (~0.37 bit/weight less).")
@click.option("--compute-dtype", type=click.Choice(COMPUTE_DTYPES), default=None,
              help="4-bit matmul dtype [default: the model's dtype].")
@click.option("--int8-threshold", type=float, default=None,
              help="8-bit outlier threshold on activations [default: 6.0; 0 = pure int8].")
@click.option("--target", type=click.Choice(QUANT_TARGETS), default=DEFAULT_TARGET, show_default=True,
              help="language: decoder only; vision: vision tower only; all: everything but lm_head.")
@click.option("--keep", multiple=True, metavar="MODULE",
              help="Leave this module (full dotted name or glob, e.g. '*.mlp.down_proj') unquantized. Repeatable.")
@click.option("--also", multiple=True, metavar="MODULE", help="Quantize this module too (e.g. lm_head). Repeatable.")
@click.option("--device", default="cpu", show_default=True,
              help="Where to quantize and verify: cpu, cuda, cuda:1, or auto (cuda if available, else cpu).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@handle_errors
def quantize(model, out, bits, quant_type, double_quant, compute_dtype, int8_threshold, target, keep, also, device,
             overwrite):
    """Quantize MODEL's Linear layers with bitsandbytes; save a checkpoint that reloads.

    \b
    vlmslim quantize ckpt/llava-glu25 --out ckpt/llava-glu25-nf4 --bits 4 --double-quant --target language

    MODEL is a hub id, an HF directory or a vlmslim (pruned) checkpoint. The census after quantization
    must equal the target exactly; the saved checkpoint is reloaded and compared by logits.
    """
    from vlmslim.quantization import QuantSpec, recipe_from_bits
    from vlmslim.quantization import quantize as run_quantize

    try:
        recipe = recipe_from_bits(int(bits), quant_type, double_quant, compute_dtype, int8_threshold)
        spec = QuantSpec(recipe, target, keep, also)
    except ValueError as e:  # an option combination the recipe refuses (e.g. --quant-type with --bits 8)
        raise click.ClickException(str(e)) from e
    record = run_quantize(model, out, spec, device=device, overwrite=overwrite)
    t, m, e = record["target"], record["measured_bytes"], record["expected_bytes"]
    click.echo(f"{out}: {len(t['quantized_modules'])} Linear layers -> {record['recipe']['name']} "
               f"(target {t['name']}); tensors {m['payload']:,} B (analytic {e['total']:,} B); "
               f"logit SQNR {record['sqnr_db']:.1f} dB; reload max |dlogit| {record['reload_max_abs_diff']:.2g}")
