"""`vlmslim sweep`: a whole study from one recipe file (vlmslim.recipes)."""

from __future__ import annotations

from pathlib import Path

import click

from vlmslim.cli import cli, handle_errors


def _names(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n.strip() for v in values for n in v.split(",") if n.strip())


@cli.command("sweep")
@click.argument("recipe")
@click.option("--out", default=None, help="Output dir [default: the recipe's `out`, else runs/<recipe name>].")
@click.option("--only", multiple=True, metavar="NAME[,NAME]",
              help="Run only these variants (and the checkpoints and baseline they need). Repeatable.")
@click.option("--device", default=None,
              help="Every step's device: auto (cuda if available, else cpu), cpu, cuda, cuda:1 [default: the "
                   "recipe's `device`, else auto].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key (value parsed as YAML), e.g. --set bench.batch_size=8 "
                   "--set data=data/coco-val500. Repeatable.")
@click.option("--dry-run", is_flag=True, help="Print the plan (done / will run / will rebuild per step) and stop.")
@handle_errors
def sweep(recipe, out, only, device, overrides, dry_run):
    """Run a study from RECIPE (a YAML file, or a shipped recipe's name): data, every variant's steps,
    benchmarks under one protocol, figures and a table. Resumable: a re-run skips every step whose stamp
    (config + inputs) matches and rebuilds the ones whose inputs changed.

    \b
    vlmslim sweep seed000-llava-coco --dry-run
    vlmslim sweep study.yaml --only glu30,glu30-nf4 --device cuda
    vlmslim sweep demo --out runs/demo-small --set data.synthetic.n=6 --set bench.bootstrap=20

    Shipped recipes: demo, seed000-llava-coco, seed001-smolvlm-textvqa, seed002-qwen-coco,
    seed004-llava-vqaonline-grid (vlmslim/recipes/*.yaml).
    """
    from vlmslim.cli.render import sweep_plan_text
    from vlmslim.recipes import find_recipe, load_recipe, make_plan, run_plan

    r = load_recipe(find_recipe(recipe), overrides)
    out = out or r.out or str(Path("runs") / r.name)
    plan = make_plan(r, out, only=_names(only), device=device)
    click.echo(sweep_plan_text(plan), err=not dry_run)
    if dry_run:
        return
    result = run_plan(plan)
    if result.table:
        click.echo(result.table)
    click.echo(f"{len(result.ran)} step(s) ran, {len(result.skipped)} done before; results: {out}/results/*, "
               f"figures: {result.figures or '-'}", err=True)
    if result.failures:
        for f in result.failures:
            click.echo(f"FAILED {f['step']}: {f['error']}: {f['message']}", err=True)
        raise click.ClickException(f"{len(result.failures)} step(s) failed (see {out}/failures.json)")
