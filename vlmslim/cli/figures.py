"""`vlmslim figures`: results dirs in, frontiers, bars, tables and a spot-check gallery out (no torch)."""

from __future__ import annotations

import click

from vlmslim.cli import cli, handle_errors

_COST_CHOICES = ["latency", "vram", "ttft", "size", "energy", "all"]  # mirrors vlmslim.figures.style.COST_AXES


@cli.command("figures")
@click.argument("results_dirs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(path_type=str), help="Output dir (built atomically).")
@click.option("--metric", default=None, help="Quality metric to plot [default: the task's: cider / vqa_accuracy / rouge_l].")
@click.option("--cost", "costs", multiple=True, type=click.Choice(_COST_CHOICES), default=("all",), show_default=True,
              help="Cost axis; repeat for several.")
@click.option("--allow-mixed", is_flag=True,
              help="Plot runs that differ in task, data or protocol (batch size, max new tokens, device, dtype, "
                   "engine, prompt, limit) together, each label naming its values [default: refused].")
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




