"""Command line: one thin click command per pipeline step, each calling a library function.

Commands parse options and turn expected library errors (`VlmslimError`) into one-line
`click.ClickException`s; no logic lives here.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import click

from vlmslim import __version__
from vlmslim import data as _data
from vlmslim.benchmarks.tasks import DEFAULT_BERTSCORE_MODEL, TASKS
from vlmslim.errors import VlmslimError

# Choices of registries that live in torch-importing modules, spelled out so `vlmslim -h` and the
# figures/data commands start without torch; tests/test_cli.py checks they equal the registries.
NEURON_CRITERIA = ("activation", "hybrid", "l2", "maw", "pon", "vow")
HEAD_CRITERIA = ("activation", "o_norm")
HEAD_MODES = ("groups", "query")
QUANT_TARGETS = ("all", "language", "vision")
DEFAULT_TARGET = "language"
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
DEMO_VARIANTS = ("base", "glu30", "glu50", "glu70", "glu80", "heads25", "heads50", "glu30-heads25", "drop1",
                 "int8", "nf4", "glu30-nf4")


def _setup_logging(verbosity: int) -> None:
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 0 else logging.ERROR)
    if verbosity < 0:  # -q also silences the progress bars of datasets / huggingface_hub
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
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


class OneLineErrors(click.Group):
    """A group whose usage errors (unknown option, bad choice, missing --out) print one `Error:` line and
    exit 2, like every other expected failure (exit 1), instead of click's usage banner."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            click.echo(f"Error: {e.format_message()} (see '{e.ctx.command_path if e.ctx else 'vlmslim'} -h')",
                       err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
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

    from vlmslim.checkpoint import describe
    from vlmslim.report import describe_text

    info = describe(model)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else describe_text(info))


# --- data: evaluation sets onto disk (vlmslim.data) ---------------------------------------------


def _echo_dataset(path: Path, out: Path) -> None:
    ds = _data.load(path)  # the absolute path the library returns: `--out .` is renamed under our cwd
    skipped = ds.meta.get("counts", {}).get("skipped", 0)
    click.echo(f"{out}: {len(ds)} {ds.task} samples ({skipped} skipped)")


@cli.group()
def data() -> None:
    """Get evaluation sets onto disk once; every later step reads them offline.

    \b
    Layout: DIR/images/, DIR/samples.jsonl, DIR/meta.json (+ DIR/annotations.json for captions).
    """


@data.command("download")
# NAME is checked by the library, not click.Choice, so an unknown name is a one-line error like the
# others; the metavar still lists the registry.
@click.argument("name", metavar="{" + ",".join(sorted(_data.SOURCES)) + "}")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset directory to create.")
@click.option("--split", default=None, help="Source split [default: coco-captions val, textvqa validation, vqaonline test].")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Seeded random subset of N rows (not the first N).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --limit subset.")
@click.option("--source", default=None, help="Hub id or local copy (dir, parquet/json files) [default: the registry's hub id].")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) to pin.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@handle_errors
def data_download(name, out, split, limit, seed, source, revision, overwrite) -> None:
    """Download a registered evaluation set into the local layout.

    \b
    Example:
      vlmslim data download coco-captions --out data/coco-val500 --limit 500 --seed 0
    """
    path = _data.download(name, out, split=split, limit=limit, seed=seed, source=source, revision=revision,
                          overwrite=overwrite)
    _echo_dataset(path, out)


@data.command("import")
@click.argument("images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--captions", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="COCO captions .json (images + annotations) or .csv with image,caption columns.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@handle_errors
def data_import(images_dir, captions, out, overwrite) -> None:
    """Import your own images and captions as a caption set.

    \b
    Example:
      vlmslim data import photos/ --captions photos/captions.csv --out data/my-photos
    """
    _echo_dataset(_data.import_captions(images_dir, captions, out, overwrite=overwrite), out)


@data.command("synthetic")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Dataset directory to create.")
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of scenes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Scene seed (use different seeds for train and eval).")
@click.option("--size", type=click.IntRange(min=32), default=64, show_default=True, help="Image side in pixels.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@handle_errors
def data_synthetic(out, n, seed, size, overwrite) -> None:
    """Render the offline shapes-captioning set (same seed -> byte-identical files).

    \b
    Example:
      vlmslim data synthetic --out data/shapes-eval --n 200 --seed 1
    """
    _echo_dataset(_data.make_synthetic(out, n=n, seed=seed, size=size, overwrite=overwrite), out)


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


# --- prune -------------------------------------------------------------------------------------


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
@click.option("--importance", type=click.Choice(NEURON_CRITERIA), default="maw", show_default=True,
              help="MLP neuron criterion (activation, hybrid need --calibration).")
@click.option("--head-importance", type=click.Choice(HEAD_CRITERIA), default="o_norm", show_default=True,
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


# --- bench -------------------------------------------------------------------------------------


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
@click.option("--data", help="Dataset dir written by `vlmslim data ...` (not with --random-weights).")
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
@click.option("--random-weights", is_flag=True,
              help="MODELs are shipped configs (e.g. llava-1.5-7b) with random weights: speed and memory only.")
@click.option("--glu", type=float, default=0.0, help="With --random-weights: prune this GLU fraction first.")
@click.option("--heads", type=float, default=0.0, help="With --random-weights: prune this head fraction first.")
@click.option("--name", help="Label in tables and figures (one MODEL only; default: the dir's or repo's name).")
@click.option("--engine", type=click.Choice(["eager", "compiled"]), default="eager", show_default=True,
              help="eager: plain generate; compiled: static KV cache + CUDA-graph decode step (GPU).")
@click.option("--baseline", type=click.Path(exists=True, file_okay=False),
              help="Results dir to compare against (paired CIs).")
@click.option("--bertscore-model", default=DEFAULT_BERTSCORE_MODEL, show_default=True, help="Hub id or local dir.")
@click.option("--no-bertscore", is_flag=True, help="Skip BERTScore (open-vqa).")
@click.option("--no-energy", is_flag=True, help="Do not run codecarbon's energy tracker.")
@click.option("--allow-no-java", is_flag=True,
              help="Without Java: score with a simple tokenizer and no METEOR, labelled as such in the summary.")
@click.option("--energy-country", default="USA", show_default=True, help="ISO code for codecarbon's offline mode.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Unrecorded warm-up passes on the first batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Subset selection and bootstrap seed.")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples for 95% CIs.")
@handle_errors
def bench(models, data, out, task, limit, batch_size, max_new_tokens, prompt, ocr_tokens, device, dtype, quant,
          random_weights, glu, heads, name, engine, baseline, bertscore_model, no_bertscore, no_energy, allow_no_java,
          energy_country, warmup, seed, bootstrap):
    """Quality and efficiency of checkpoints on one dataset, from the same greedy generations.

    \b
    vlmslim bench ckpt/llava-glu25 --data data/coco-val --out results/llava-glu25 --limit 500 --batch-size 8
    vlmslim bench base ckpt/a ckpt/b --data data/textvqa --out results/sweep --baseline results/sweep/base

    Writes config.yaml, samples.jsonl (one row per sample, flushed per batch), sessions.jsonl,
    summary.json and summary.csv; an interrupted run resumes where it stopped.
    """
    from vlmslim.benchmarks.run import BenchConfig, bench_many

    if random_weights:
        return _bench_random(models, out, batch_size, max_new_tokens, device, dtype, quant, engine, glu, heads)
    if data is None:
        raise click.UsageError("Missing option '--data' (or pass --random-weights for an architecture-only run)")
    if glu or heads:
        raise click.UsageError("--glu/--heads prune random-weight models only; prune checkpoints with `vlmslim prune`")

    options = dict(data=data, task=task, limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens,
                   prompt=prompt, ocr_tokens=ocr_tokens, device=device, dtype=dtype, quant=quant, name=name, engine=engine,
                   baseline=baseline,
                   bertscore_model=None if no_bertscore else bertscore_model, energy=not no_energy,
                   java_fallback=allow_no_java,
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


def _bench_random(models, out, batch_size, max_new_tokens, device, dtype, quant, engine, glu, heads):
    from vlmslim.benchmarks.architecture import ArchBenchConfig, bench_architecture

    engines = ("eager", "compiled") if engine == "compiled" else ("eager",)  # compiled is checked against eager
    prune = {k: v for k, v in (("glu", glu), ("heads", heads)) if v}
    for m in models:
        target = out if len(models) == 1 else str(Path(out) / Path(m).stem)
        try:
            cfg = ArchBenchConfig(config=m, out=target, batch_size=batch_size, max_new_tokens=max_new_tokens or 64,
                                  engines=engines, dtype=dtype or "float16", device=device or "cuda",
                                  prune=prune, quant=quant)
        except ValueError as e:
            raise click.UsageError(str(e)) from e
        s = bench_architecture(cfg)
        e = s["efficiency"]
        click.echo(f"{m} (random weights): decode {e['decode_ms_per_token']:.2f} ms/token, prefill "
                   f"{e['ttft_s_p50']:.3f} s, {e['throughput_images_per_s']:.2f} images/s, "
                   f"{e['model_size_mb']:.0f} MB -> {target}")


# --- quantize ----------------------------------------------------------------------------------


@cli.command()
@click.argument("model")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory.")
@click.option("--bits", required=True, type=click.Choice(["8", "4"]), help="8: LLM.int8; 4: nf4 (default) or fp4.")
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


# --- demo --------------------------------------------------------------------------------------


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
    from vlmslim.report import table

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
             fmt(r["size_mb"], ".2f"), fmt(r["latency_s_p50"], ".3f"), fmt(r["decode_ms_per_token"], ".2f")]
            for r in result["rows"]]
    click.echo(table(rows, ["variant", "CIDEr-D", "95% CI", "BLEU-4", "words", "params M", "MB",
                            "latency p50 s", "decode ms/tok"]))
    click.echo(f"\nresults: {result['out']}/results/*  figures: {result['figures']}  "
               f"(frontier_latency.png, summary.md, spotcheck.html)")
    if result["failures"]:
        raise click.ClickException(f"{len(result['failures'])} variant(s) failed: "
                                   + ", ".join(f["variant"] for f in result["failures"])
                                   + f" (see {result['out']}/failures.json)")


def main() -> None:
    cli(prog_name="vlmslim")
