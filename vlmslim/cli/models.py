"""`vlmslim inspect`, `vlmslim prune`, `vlmslim quantize`: checkpoints in, checkpoints out."""

from __future__ import annotations

import click

from vlmslim.cli import (ALLOCATIONS, COMPUTE_DTYPES, DEFAULT_CALIBRATION_SAMPLES, DEFAULT_TARGET, HEAD_CRITERIA,
                         BNB_RECIPES, HEAD_MODES, NEURON_CRITERIA, QUANT_RECIPES, QUANT_TARGETS, cli, handle_errors)


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
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output checkpoint directory (required unless --plan-only).")
@click.option("--glu", type=float, default=0.0, show_default=True,
              help="Fraction of GLU-MLP neurons removed in every decoder layer (0 <= R < 1).")
@click.option("--heads", type=float, default=0.0, show_default=True,
              help="Fraction of attention heads removed in every decoder layer (0 <= R < 1).")
@click.option("--head-mode", type=click.Choice(HEAD_MODES), default="groups", show_default=True,
              help="groups: remove whole KV groups (shrinks the KV cache); query: query heads inside each group.")
@click.option("--drop-layers", default=None, metavar="N|I,J",
              help="Drop the N most redundant decoder layers (needs --calibration) or the listed layer indices.")
@click.option("--trim-vision", is_flag=True, help="Drop vision layers after vision_feature_layer (never read).")
@click.option("--importance", type=click.Choice(NEURON_CRITERIA), default=None,
              help="Scores MLP neurons only (--glu) [default: maw]; activation, hybrid need --calibration. "
                   "Attention heads: --head-importance.")
@click.option("--head-importance", type=click.Choice(HEAD_CRITERIA), default=None,
              help="Scores attention heads (--heads) [default: o_norm]; activation needs --calibration.")
@click.option("--calibration", type=click.Path(), default=None, help="A `vlmslim data` directory.")
@click.option("--calibration-samples", type=int, default=None,
              help=f"Samples run for activation statistics [default: {DEFAULT_CALIBRATION_SAMPLES}, or the whole "
                   "set when smaller, with a warning]; more than the set holds is refused.")
@click.option("--round-to", type=int, default=64, show_default=True, help="Kept MLP widths are multiples of this.")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default="uniform", show_default=True,
              help="How --glu/--heads spread over layers at the same total: uniform, sensitivity (loss when a layer "
                   "is pruned alone), owl (activation outliers); the last two need --calibration.")
@click.option("--max-layer-ratio", type=float, default=0.9, show_default=True,
              help="Non-uniform allocation never removes more than this fraction of one layer's units.")
@click.option("--teacher-tokens", type=int, default=32, show_default=True,
              help="Max new tokens of the model's own greedy answers (the loss of taylor and sensitivity).")
@click.option("--plan-only", is_flag=True, help="Print the per-layer plan and the parameter/byte budget; write nothing.")
@click.option("--streaming", is_flag=True,
              help="Read, score, cut and write one decoder layer at a time from MODEL's safetensors shards (CPU, "
                   "memory ~ one layer + embeddings); weight criteria, uniform allocation; same output.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, cuda, cuda:1, ..., or auto (cuda if available, else cpu).")
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the calibration subset.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@handle_errors
def prune_cmd(model, out, glu, heads, head_mode, drop_layers, trim_vision, importance, head_importance, calibration,
              calibration_samples, round_to, allocation, max_layer_ratio, teacher_tokens, plan_only, streaming, device,
              seed, overwrite):
    """Structurally prune MODEL (hub id, HF dir or vlmslim checkpoint) into a new checkpoint.

    \b
    vlmslim prune llava-hf/llava-1.5-7b-hf --out ckpt/glu30-h25 --glu 0.3 --heads 0.25 --device cuda
    vlmslim prune demo --glu 0.8 --importance taylor --allocation sensitivity --calibration calib --plan-only
    vlmslim prune ckpt/llava-34b --out ckpt/llava-34b-glu30 --glu 0.3 --streaming
    """
    from vlmslim.pruning.config import PruneConfig, parse_drop_layers
    from vlmslim.pruning.step import plan_checkpoint, prune_checkpoint

    if out is None and not plan_only:
        raise click.UsageError("Missing option '--out' (or pass --plan-only).")
    given = {k: v for k, v in dict(importance=importance, head_importance=head_importance,
                                    calibration_samples=calibration_samples).items() if v is not None}
    try:  # options not given take PruneConfig's defaults
        config = PruneConfig(glu=glu, heads=heads, head_mode=head_mode, drop_layers=parse_drop_layers(drop_layers),
                             trim_vision=trim_vision, round_to=round_to, calibration=calibration, seed=seed,
                             allocation=allocation, max_layer_ratio=max_layer_ratio, teacher_tokens=teacher_tokens,
                             **given)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    unused = config.unused_criteria(set(given))
    if unused:
        raise click.UsageError(unused)
    if plan_only:
        from vlmslim.cli.render import plan_text

        click.echo(plan_text(plan_checkpoint(model, config, device=device)))
        return
    path, manifest = prune_checkpoint(model, out, config, device=device, overwrite=overwrite, streaming=streaming)
    step = manifest["steps"][-1]
    before, after = sum(step["params_before"].values()), sum(step["params_after"].values())
    check = (f"reload max |dlogit| {step['reload_max_abs_diff']:.2g}" if "reload_max_abs_diff" in step
             else f"reload check: {step['reload_check']} (streaming)")
    click.echo(f"{path}: {step['method']} {before:,} -> {after:,} params ({1 - after / before:.1%} removed); "
               f"stock loadable: {step['stock_loadable']}; {check}")




# --- quantize ----------------------------------------------------------------------------------


@cli.command()
@click.argument("model")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory.")
@click.option("--recipe", type=click.Choice(QUANT_RECIPES),
              help="int8 / nf4 / fp4: bitsandbytes; int4wo: 4-bit weight-only (tinygemm, fast GPU decode); "
                   "fp8: e4m3 weight-only (Ada/Hopper GPUs); int8wo: int8 weight-only; int8dq: int8 weights and "
                   "dynamic int8 activations (fast CPU inference).")
@click.option("--bits", type=click.Choice(["8", "4"]), help="bitsandbytes by width: 8 = int8; 4 = nf4 (default) or fp4.")
@click.option("--group-size", type=int, default=None, help="int4wo: inputs per scale/zero [default: 128].")
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
def quantize(model, out, recipe, bits, group_size, quant_type, double_quant, compute_dtype, int8_threshold, target, keep,
             also, device, overwrite):
    """Quantize MODEL's Linear layers (bitsandbytes, int4/fp8 weight-only, int8 dynamic); save a checkpoint that reloads.

    \b
    vlmslim quantize ckpt/llava-glu25 --out ckpt/llava-glu25-nf4 --bits 4 --double-quant --target language
    vlmslim quantize ckpt/llava-glu25 --out ckpt/llava-glu25-int4wo --recipe int4wo --group-size 128

    MODEL is a hub id, an HF directory or a vlmslim (pruned) checkpoint. The census after quantization
    must equal the target exactly; the saved checkpoint is reloaded and compared by logits.
    """
    from vlmslim.quantization import QuantSpec, make_recipe, recipe_from_bits
    from vlmslim.quantization import quantize as run_quantize

    if (recipe is None) == (bits is None):
        raise click.UsageError("pass exactly one of --recipe NAME or --bits 8|4")
    try:
        if recipe in ("nf4", "fp4") and quant_type not in (None, recipe):
            raise ValueError(f"--recipe {recipe} with --quant-type {quant_type}: pass one of them")
        if recipe in BNB_RECIPES:  # a bnb recipe by name: the --bits path with its type
            bits, quant_type = ("8", quant_type) if recipe == "int8" else ("4", quant_type or recipe)
        if recipe is not None and recipe not in BNB_RECIPES:  # vlmslim's own kernels
            for given, flag in ((quant_type, "--quant-type"), (double_quant, "--double-quant"),
                                (compute_dtype, "--compute-dtype"), (int8_threshold, "--int8-threshold")):
                if given:
                    raise ValueError(f"{flag} applies to bitsandbytes recipes, not {recipe}")
            if group_size is not None and recipe != "int4wo":
                raise ValueError("--group-size applies to --recipe int4wo only")
            chosen = make_recipe(recipe, **({} if group_size is None else {"group_size": group_size}))
        else:
            if group_size is not None:
                raise ValueError("--group-size applies to --recipe int4wo only")
            chosen = recipe_from_bits(int(bits), quant_type, double_quant, compute_dtype, int8_threshold)
        spec = QuantSpec(chosen, target, keep, also)
    except ValueError as e:  # an option combination the recipe refuses (e.g. --quant-type with --bits 8)
        raise click.ClickException(str(e)) from e
    record = run_quantize(model, out, spec, device=device, overwrite=overwrite)
    t, m, e = record["target"], record["measured_bytes"], record["expected_bytes"]
    click.echo(f"{out}: {len(t['quantized_modules'])} Linear layers -> {record['recipe']['name']} "
               f"(target {t['name']}); tensors {m['payload']:,} B (analytic {e['total']:,} B); "
               f"logit SQNR {record['sqnr_db']:.1f} dB; reload max |dlogit| {record['reload_max_abs_diff']:.2g}")
