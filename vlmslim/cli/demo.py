"""`vlmslim demo`: the whole pipeline on the embedded miniature VLM (the shipped `demo` recipe)."""

from __future__ import annotations

import click

from vlmslim.cli import DEMO_VARIANTS, cli, handle_errors


@cli.command()
@click.option("--out", default="vlmslim-demo", show_default=True, help="Where every artifact goes (resumable).")
@click.option("--n", "n", default=None, type=click.IntRange(min=1),
              help="Held-out synthetic scenes to benchmark on [default: 100].")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="[default: 20]")
@click.option("--bootstrap", default=None, type=click.IntRange(min=0), help="[default: 1000]")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, or auto (cuda if available) [default: cpu].")
@click.option("--variants", default=None, metavar="A,B,...",
              help="Subset of the demo variants (default: all): " + ", ".join(DEMO_VARIANTS))
@click.option("--no-energy", is_flag=True, help="Skip codecarbon's energy estimate.")
@handle_errors
def demo(out, n, batch_size, bootstrap, device, variants, no_energy):
    """The whole pipeline on the embedded miniature LLaVA, offline, on a CPU.

    \b
    vlmslim demo --out vlmslim-demo

    Runs the shipped recipe vlmslim/recipes/demo.yaml (= `vlmslim sweep demo`): makes a held-out
    synthetic caption set, prunes (GLU 30/50/70/80 %, heads 25/50 %, combined, a layer drop), recovers
    three prunes by distillation, quantizes (int8, nf4, pruned + nf4, int4wo, int8dq), reduces image tokens, benchmarks every variant with bootstrap CIs, draws
    the figures and prints a summary table. Re-running skips finished steps.
    """
    from vlmslim.cli.render import table
    from vlmslim.recipes import load_recipe, make_plan, run_plan
    from vlmslim.recipes.demo import DEMO_RECIPE, demo_overrides, summary_rows

    only = tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else ()
    unknown = [v for v in only if v not in DEMO_VARIANTS]
    if unknown:
        raise click.UsageError(f"unknown demo variant(s) {unknown}; known: {', '.join(DEMO_VARIANTS)}")
    recipe = load_recipe(DEMO_RECIPE, demo_overrides(n, batch_size, bootstrap, device, energy=not no_energy))
    result = run_plan(make_plan(recipe, out, only=only))
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    rows = [[r["name"], fmt(r["cider"], ".3f"),
             "-" if not r["cider_ci"] else f"[{r['cider_ci'][0]:.3f}, {r['cider_ci'][1]:.3f}]",
             fmt(r["bleu4"], ".3f"), fmt(r["caption_len"], ".1f"), fmt(r["params_m"], ".2f"),
             fmt(r["size_mb"], ".2f"), fmt(r["latency_s_p50"], ".3f"), fmt(r["ttft_s_p50"], ".3f"),
             fmt(r["decode_ms_per_token"], ".2f")]
            for r in summary_rows(result.results)]
    click.echo(table(rows, ["variant", "CIDEr-D", "95% CI", "BLEU-4", "words", "params M", "MB",
                            "latency p50 s", "TTFT p50 s", "decode ms/tok"]))
    click.echo(f"\nresults: {out}/results/*  figures: {out}/figures  "
               f"(frontier_latency.png, summary.md, spotcheck.html, table.md)")
    if result.failures:
        raise click.ClickException(f"{len(result.failures)} step(s) failed: "
                                   + ", ".join(f["step"] for f in result.failures)
                                   + f" (see {out}/failures.json)")
