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


# ---------------------------------------------------------------- prune

from vlmslim.pruning.config import HEAD_MODES  # noqa: E402
from vlmslim.pruning.importance import HEAD_IMPORTANCE, NEURON_IMPORTANCE  # noqa: E402


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
@click.option("--importance", type=click.Choice(sorted(NEURON_IMPORTANCE)), default="maw", show_default=True,
              help="MLP neuron criterion (activation, hybrid need --calibration).")
@click.option("--head-importance", type=click.Choice(sorted(HEAD_IMPORTANCE)), default="o_norm", show_default=True,
              help="Attention head criterion (activation needs --calibration).")
@click.option("--calibration", type=click.Path(), default=None, help="A `vlmslim data` directory.")
@click.option("--calibration-samples", type=int, default=32, show_default=True)
@click.option("--round-to", type=int, default=64, show_default=True, help="Kept MLP widths are multiples of this.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
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
    from vlmslim.pruning.prune import prune_checkpoint

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


def main() -> None:
    cli(prog_name="vlmslim")
