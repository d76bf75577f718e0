"""`vlmslim demo`: the whole pipeline on the embedded miniature VLM."""

from __future__ import annotations

import click

from vlmslim.cli import DEMO_VARIANTS, cli, handle_errors



@cli.command()
@click.option("--out", default="vlmslim-demo", show_default=True, help="Where every artifact goes (resumable).")
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=1),
              help="Held-out synthetic scenes to benchmark on.")
@click.option("--batch-size", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(min=0))
@click.option("--device", default="cpu", show_default=True)
@click.option("--variants", default=None, metavar="A,B,...",
              help="Subset of the demo variants (default: all): " + ", ".join(DEMO_VARIANTS))
@click.option("--no-energy", is_flag=True, help="Skip codecarbon's energy estimate.")
@handle_errors
def demo(out, n, batch_size, bootstrap, device, variants, no_energy):
    """The whole pipeline on the embedded miniature LLaVA, offline, on a CPU.

    \b
    vlmslim demo --out vlmslim-demo

    Makes a held-out synthetic caption set, prunes (GLU 30/50/70 %, heads 25/50 %, combined, a layer
    drop), quantizes (int8, nf4, pruned + nf4), benchmarks every checkpoint with bootstrap CIs, draws
    the figures and prints a summary table. Re-running skips finished steps.
    """
    from vlmslim.demo.pipeline import DemoConfig, run_demo
    from vlmslim.cli.render import table

    kwargs = {"variants": tuple(variants.split(","))} if variants else {}
    try:
        cfg = DemoConfig(out=out, n=n, batch_size=batch_size, bootstrap=bootstrap, device=device,
                         energy=not no_energy, **kwargs)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    result = run_demo(cfg)
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    rows = [[r["name"], fmt(r["cider"], ".3f"),
             "-" if not r["cider_ci"] else f"[{r['cider_ci'][0]:.3f}, {r['cider_ci'][1]:.3f}]",
             fmt(r["bleu4"], ".3f"), fmt(r["caption_len"], ".1f"), fmt(r["params_m"], ".2f"),
             fmt(r["size_mb"], ".2f"), fmt(r["latency_s_p50"], ".3f"), fmt(r["ttft_s_p50"], ".3f"),
             fmt(r["decode_ms_per_token"], ".2f")]
            for r in result["rows"]]
    click.echo(table(rows, ["variant", "CIDEr-D", "95% CI", "BLEU-4", "words", "params M", "MB",
                            "latency p50 s", "TTFT p50 s", "decode ms/tok"]))
    click.echo(f"\nresults: {result['out']}/results/*  figures: {result['figures']}  "
               f"(frontier_latency.png, summary.md, spotcheck.html)")
    if result["failures"]:
        raise click.ClickException(f"{len(result['failures'])} variant(s) failed: "
                                   + ", ".join(f["variant"] for f in result["failures"])
                                   + f" (see {result['out']}/failures.json)")
