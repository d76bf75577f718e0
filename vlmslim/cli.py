"""Command line: one thin click command per pipeline step, each calling a library function.

Commands parse options and turn expected library errors (`VlmslimError`) into one-line
`click.ClickException`s; no logic lives here.
"""

from __future__ import annotations

import functools
import logging

import click

from vlmslim import __version__
from vlmslim.errors import VlmslimError


def _setup_logging(verbosity: int) -> None:
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 0 else logging.ERROR)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    # transformers / datasets are chatty at INFO; keep them at WARNING unless -vv.
    for noisy in ("transformers", "datasets", "urllib3", "filelock", "codecarbon", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)


def handle_errors(fn):
    """Turn expected library errors into one-line CLI errors (exit 1), keeping tracebacks for bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VlmslimError as e:
            raise click.ClickException(str(e)) from e

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vlmslim")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for library debug logs).")
@click.option("-q", "--quiet", count=True, help="Less log output.")
def cli(verbose: int, quiet: int) -> None:
    """Prune, quantize and benchmark vision-language models.

    \b
    Steps: data -> prune -> quantize -> bench -> figures.  `vlmslim demo` runs them all
    on the embedded miniature VLM on a CPU.
    """
    _setup_logging(verbose - quiet)


# ---------------------------------------------------------------- quantize (issue 5)

from vlmslim.quantization.recipes import COMPUTE_DTYPES  # noqa: E402  (registries feed the choices)
from vlmslim.quantization.targets import DEFAULT_TARGET, TARGETS  # noqa: E402


@cli.command()
@click.argument("model")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory.")
@click.option("--bits", required=True, type=click.Choice(["8", "4"]), help="8: LLM.int8; 4: nf4 (default) or fp4.")
@click.option("--quant-type", type=click.Choice(["nf4", "fp4"]), default=None, help="4-bit data type [default: nf4].")
@click.option("--double-quant", is_flag=True, help="4-bit: quantize the per-block scales too (~0.37 bit/weight less).")
@click.option("--compute-dtype", type=click.Choice(sorted(COMPUTE_DTYPES)), default=None,
              help="4-bit matmul dtype [default: the model's dtype].")
@click.option("--int8-threshold", type=float, default=None,
              help="8-bit outlier threshold on activations [default: 6.0; 0 = pure int8].")
@click.option("--target", type=click.Choice(sorted(TARGETS)), default=DEFAULT_TARGET, show_default=True,
              help="language: decoder only; vision: vision tower only; all: everything but lm_head.")
@click.option("--keep", multiple=True, metavar="MODULE",
              help="Leave this module (full dotted name or glob, e.g. '*.mlp.down_proj') unquantized. Repeatable.")
@click.option("--also", multiple=True, metavar="MODULE", help="Quantize this module too (e.g. lm_head). Repeatable.")
@click.option("--device", default="cpu", show_default=True, help="Where to quantize and verify (cpu, cuda, cuda:1).")
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


def main() -> None:
    cli(prog_name="vlmslim")
