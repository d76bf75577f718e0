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


# ---------------------------------------------------------------- bench

from vlmslim.benchmarks.tasks import DEFAULT_BERTSCORE_MODEL, TASKS  # noqa: E402  (light: no torch)


def _echo_summary(out: str, summary: dict) -> None:
    m, e = summary["metrics"], summary["efficiency"]
    headline = TASKS[summary["task"]].headline
    value, ci = m.get(headline), summary["ci"].get(headline)
    quality = f"{headline} {value:.4g}" if value is not None else f"{headline} n/a"
    if ci:
        quality += f" [{ci[0]:.4g}, {ci[1]:.4g}]"
    vram = f"{e['peak_vram_mb']:.0f} MB" if e["peak_vram_mb"] is not None else "n/a (cpu)"
    click.echo(f"{summary['model']['name']}: {quality}; n={summary['n_samples']} (skipped {summary['n_skipped']}); "
               f"latency p50 {e['latency_s_p50']:.3g} s; {e['tokens_per_s']:.3g} tok/s; peak VRAM {vram} -> {out}")


@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--data", required=True, help="Dataset dir written by `vlmslim data ...`.")
@click.option("--out", required=True, help="Results dir (several MODELs: one subdir each). Re-run to resume.")
@click.option("--task", type=click.Choice(sorted(TASKS)),
              help="Must match the dataset's task (default: the dataset's).")
@click.option("--limit", type=int, help="Seeded subset of N samples (a larger N contains a smaller one).")
@click.option("--batch-size", type=int, default=1, show_default=True,
              help="Recorded: batching can change greedy outputs.")
@click.option("--max-new-tokens", type=int, help="Default: the task's (caption 64, vqa 16, open-vqa 256).")
@click.option("--prompt", help="Replace the task's pinned instruction (caption) or answer-style line after the "
                                "question (vqa, open-vqa); recorded in config.yaml and the summary.")
@click.option("--ocr-tokens", is_flag=True, help="vqa: add the sample's OCR tokens to the prompt (off by default).")
@click.option("--device", help="cpu, cuda, cuda:1, or auto (device_map='auto' over all GPUs). "
                                "Default: cuda if present.")
@click.option("--dtype", type=click.Choice(["auto", "float16", "bfloat16", "float32"]), help="Default: as saved.")
@click.option("--quant", help="Quantize at load with this vlmslim.quantization recipe (e.g. nf4).")
@click.option("--baseline", type=click.Path(exists=True, file_okay=False),
              help="Results dir to compare against (paired CIs).")
@click.option("--bertscore-model", default=DEFAULT_BERTSCORE_MODEL, show_default=True, help="Hub id or local dir.")
@click.option("--no-bertscore", is_flag=True, help="Skip BERTScore (open-vqa).")
@click.option("--no-energy", is_flag=True, help="Do not run codecarbon's energy tracker.")
@click.option("--energy-country", default="USA", show_default=True, help="ISO code for codecarbon's offline mode.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Unrecorded warm-up passes on the first batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Subset selection and bootstrap seed.")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples for 95% CIs.")
@handle_errors
def bench(models, data, out, task, limit, batch_size, max_new_tokens, prompt, ocr_tokens, device, dtype, quant,
          baseline, bertscore_model, no_bertscore, no_energy, energy_country, warmup, seed, bootstrap):
    """Quality and efficiency of checkpoints on one dataset, from the same greedy generations.

    \b
    vlmslim bench ckpt/llava-glu25 --data data/coco-val --out results/llava-glu25 --limit 500 --batch-size 8
    vlmslim bench base ckpt/a ckpt/b --data data/textvqa --out results/sweep --baseline results/sweep/base

    Writes config.yaml, samples.jsonl (one row per sample, flushed per batch), sessions.jsonl,
    summary.json and summary.csv; an interrupted run resumes where it stopped.
    """
    from vlmslim.benchmarks.run import BenchConfig, bench_many

    options = dict(data=data, task=task, limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens,
                   prompt=prompt, ocr_tokens=ocr_tokens, device=device, dtype=dtype, quant=quant, baseline=baseline,
                   bertscore_model=None if no_bertscore else bertscore_model, energy=not no_energy,
                   country=energy_country, warmup=warmup, seed=seed, bootstrap=bootstrap)
    try:
        BenchConfig(model=models[0], out=out, **options)  # validates every option before any work
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    results, failures = bench_many(list(models), out, **options)
    for model_out, summary in results:
        _echo_summary(model_out, summary)
    if failures:
        for f in failures:
            click.echo(f"FAILED {f['model']}: {f['error']}: {f['message']}", err=True)
        raise click.ClickException(f"{len(failures)} of {len(models)} models failed (see {out}/failures.json)")
