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


def main() -> None:
    cli(prog_name="vlmslim")


# --- figures -----------------------------------------------------------------------------------------
_COST_CHOICES = ["latency", "vram", "size", "energy", "all"]  # mirrors vlmslim.figures.style.COST_AXES


@cli.command("figures")
@click.argument("results_dirs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(path_type=str), help="Output dir (built atomically).")
@click.option("--metric", default=None, help="Quality metric to plot [default: the task's: cider / vqa_accuracy / rouge_l].")
@click.option("--cost", "costs", multiple=True, type=click.Choice(_COST_CHOICES), default=("all",), show_default=True,
              help="Cost axis; repeat for several.")
@click.option("--allow-mixed", is_flag=True, help="Plot runs that differ in task, dataset or n_samples together.")
@click.option("--baseline", default=None, metavar="NAME_OR_DIR", help="Reference run [default: is_baseline, else unpruned 16-bit].")
@click.option("--spotcheck", default=8, show_default=True, type=click.IntRange(min=0), help="Samples in the spot-check gallery (0: none).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the spot-check sample.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out dir.")
@handle_errors
def figures_command(results_dirs, out, metric, costs, allow_mixed, baseline, spotcheck, seed, overwrite):
    """Efficiency frontiers, bars vs baseline and a spot-check gallery from results dirs.

    \b
    Example:
      vlmslim figures results/llava-7b results/llava-7b-glu30 results/llava-7b-nf4 --out figs --metric cider

    Reads summary.json / samples.jsonl only (never loads a model). Writes frontier_<cost>.png/.svg,
    bars_<metric>.png/.svg, combined.png/.svg, summary.md, frontier.json, spotcheck.html and spotcheck.md.
    """
    # Imported here so `vlmslim --help` does not pay for matplotlib.
    from vlmslim.figures import FiguresConfig, make_figures

    try:
        config = FiguresConfig(metric=metric, costs=tuple(costs), allow_mixed=allow_mixed, baseline=baseline,
                               spotcheck=spotcheck, seed=seed, overwrite=overwrite)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    result = make_figures(results_dirs, out, config)
    for path in result.files:
        click.echo(path)
