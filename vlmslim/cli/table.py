"""`vlmslim table`: a comparison table of results dirs (no torch)."""

from __future__ import annotations

import click

from vlmslim.cli import cli, handle_errors

TABLE_FORMATS = ("md", "csv", "latex")  # mirrors vlmslim.figures.table.FORMATS (tests check it)


@cli.command("table")
@click.argument("results_dirs", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True)
@click.option("--columns", default=None, metavar="A,B,...",
              help="Column keys: name, pruning, precision, n, any metric (cider, vqa_accuracy, ...) and its "
                   "delta (cider_delta), params, size, disk, latency, latency_p90, ttft, decode, throughput, "
                   "tokens_per_s, vram, energy [default: name, pruning, precision, the task's metrics, "
                   "efficiency].")
@click.option("--sort", default=None, metavar="KEY", help="Sort by this column; -KEY for descending.")
@click.option("--baseline", default=None, metavar="NAME_OR_DIR",
              help="Reference run of the deltas [default: is_baseline, else the unpruned 16-bit run].")
@click.option("--allow-mixed", is_flag=True,
              help="Tabulate runs whose protocols differ (a protocol column names the differences) [default: refused].")
@handle_errors
def table_command(results_dirs, fmt, columns, sort, baseline, allow_mixed):
    """One row per results dir: metrics with 95% CIs, deltas vs the baseline with paired CIs, efficiency
    with units. Reads summary.json only.

    \b
    vlmslim table vlmslim-demo/results/* --columns name,cider,cider_delta,size,latency --sort -cider
    vlmslim table results/* --format latex > table.tex
    """
    from vlmslim.figures.table import TableConfig, comparison_table

    try:
        config = TableConfig(columns=columns, sort=sort, format=fmt, baseline=baseline, allow_mixed=allow_mixed)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    click.echo(comparison_table(results_dirs, config), nl=False)
