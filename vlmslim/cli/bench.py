"""`vlmslim bench`: quality and efficiency of checkpoints (or architecture-only runs)."""

from __future__ import annotations

from pathlib import Path

import click

from vlmslim.benchmarks.tasks import DEFAULT_BERTSCORE_MODEL, TASKS
from vlmslim.cli import _VERBOSITY as VERBOSITY, TOKEN_METHODS, cli, handle_errors


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
@click.option("--batch-size", type=int, help="Default 1. Recorded: batching can change greedy outputs.")
@click.option("--max-new-tokens", type=int,
              help="Default: the task's (caption 64, vqa 16, open-vqa 256); 64 with --random-weights.")
@click.option("--prompt", help="Replace the task's pinned instruction (caption) or answer-style line after the "
                                "question (vqa, open-vqa); recorded in config.yaml and the summary.")
@click.option("--ocr-tokens", is_flag=True, help="vqa: add the sample's OCR tokens to the prompt (off by default).")
@click.option("--device", help="cpu, cuda, cuda:1, or auto (device_map='auto' over all GPUs). "
                                "Default: cuda if present (always cuda with --random-weights).")
@click.option("--device-map", type=click.Choice(["auto", "balanced", "sequential"]),
              help="Spread one model larger than a device over the GPUs and the CPU (from_pretrained's device_map).")
@click.option("--max-memory", help="With --device-map: per-device limits, e.g. 0=20GiB,cpu=60GiB.")
@click.option("--processes", type=int,
              help="Data-parallel: N processes (one per GPU, or on the CPU) via accelerate's launcher share the "
                   "samples; same as `accelerate launch --multi_gpu --num_processes N -m vlmslim bench ...`.")
@click.option("--dtype", type=click.Choice(["auto", "float16", "bfloat16", "float32"]),
              help="Default: as saved (float16 with --random-weights).")
@click.option("--quant", help="Quantize at load with this vlmslim.quantization recipe (e.g. nf4).")
@click.option("--random-weights", is_flag=True,
              help="MODELs are shipped configs (e.g. llava-1.5-7b) with random weights: speed and memory only.")
@click.option("--glu", type=float, default=0.0, help="With --random-weights: prune this GLU fraction first.")
@click.option("--heads", type=float, default=0.0, help="With --random-weights: prune this head fraction first.")
@click.option("--image-tokens", type=int,
              help="Feed K image tokens per image to the language model (vlmslim.tokens; llava only).")
@click.option("--token-method", type=click.Choice(TOKEN_METHODS),
              help="How --image-tokens reduces them (default pool: K a perfect square).")
@click.option("--name", help="Label in tables and figures (one MODEL only; default: the dir's or repo's name).")
@click.option("--engine", type=click.Choice(["eager", "compiled"]),
              help="Default eager: plain generate; compiled: static KV cache + CUDA-graph decode step (GPU).")
@click.option("--no-fuse", is_flag=True,
              help="Compiled engine: keep q|k|v and gate|up as separate products (default: one each, vlmslim.fusion).")
@click.option("--attention", type=click.Choice(["split", "sdpa"]),
              help="Compiled engine's decode attention: split (default; vlmslim.attention's split-K kernels, CUDA "
                   "with Triton, else SDPA) or sdpa (transformers' SDPA).")
@click.option("--baseline", type=click.Path(exists=True, file_okay=False),
              help="Results dir to compare against (paired CIs); refused if its protocol differs.")
@click.option("--allow-mixed", is_flag=True,
              help="Compare against a --baseline run with another protocol (batch size, prompt, ...).")
@click.option("--bertscore-model", help=f"Hub id or local dir (default {DEFAULT_BERTSCORE_MODEL}).")
@click.option("--no-bertscore", is_flag=True, help="Skip BERTScore (caption, open-vqa).")
@click.option("--no-energy", is_flag=True, help="Do not run codecarbon's energy tracker.")
@click.option("--allow-no-java", is_flag=True,
              help="Without Java: score with a simple tokenizer and no METEOR, labelled as such in the summary.")
@click.option("--energy-country", help="ISO code for codecarbon's offline mode (default USA).")
@click.option("--warmup", type=int, help="Unrecorded warm-up passes on the first batch (default 1).")
@click.option("--seed", type=int, help="Subset selection and bootstrap seed (default 0).")
@click.option("--bootstrap", type=int, help="Bootstrap resamples for 95% CIs (default 1000).")
@handle_errors
@click.pass_context
def bench(ctx, models, data, out, task, limit, batch_size, max_new_tokens, prompt, ocr_tokens, device, device_map,
          max_memory, processes, dtype, quant,
          random_weights, glu, heads, image_tokens, token_method, name, engine, no_fuse, attention, baseline, allow_mixed, bertscore_model, no_bertscore, no_energy, allow_no_java,
          energy_country, warmup, seed, bootstrap):
    """Quality and efficiency of checkpoints on one dataset, from the same greedy generations.

    \b
    vlmslim data synthetic --out data/shapes --n 20
    vlmslim bench demo --data data/shapes --out results/base --no-bertscore
    vlmslim prune demo --out ckpt/glu30 --glu 0.3
    vlmslim bench ckpt/glu30 --data data/shapes --out results/glu30 --baseline results/base --no-bertscore

    Writes config.yaml, samples.jsonl (one row per sample, flushed per batch), sessions.jsonl,
    summary.json and summary.csv; an interrupted run resumes where it stopped (with any --processes).
    """
    from vlmslim.benchmarks.parallel import check_processes, launch
    from vlmslim.benchmarks.run import bench_configs, bench_many

    if random_weights:
        if processes and processes > 1:
            raise click.UsageError("--processes shares a dataset's samples; an architecture-only run has none")
        return _bench_random(models, out, batch_size=batch_size, max_new_tokens=max_new_tokens, device=device,
                             dtype=dtype, quant=quant, engine=engine, glu=glu, heads=heads,
                             image_tokens=image_tokens, token_method=token_method, device_map=device_map,
                             max_memory=max_memory, fuse=not no_fuse, attention=attention)
    if data is None:
        raise click.UsageError("Missing option '--data' (or pass --random-weights for an architecture-only run)")
    if glu or heads:
        raise click.UsageError("--glu/--heads prune random-weight models only; prune checkpoints with `vlmslim prune`")
    if processes is not None and processes < 1:
        raise click.UsageError(f"--processes must be >= 1, got {processes}")
    given = dict(device_map=device_map, max_memory=max_memory, task=task, limit=limit, image_tokens=image_tokens, token_method=token_method, batch_size=batch_size, max_new_tokens=max_new_tokens, prompt=prompt,
                 device=device, dtype=dtype, quant=quant, name=name, engine=engine, attention=attention,
                 baseline=baseline,
                 bertscore_model=bertscore_model, country=energy_country, warmup=warmup, seed=seed,
                 bootstrap=bootstrap)
    options = {k: v for k, v in given.items() if v is not None}  # the rest: BenchConfig's defaults
    options.update(ocr_tokens=ocr_tokens, energy=not no_energy, java_fallback=allow_no_java, allow_mixed=allow_mixed,
                   fuse=not no_fuse)
    if no_bertscore:
        options["bertscore_model"] = None
    try:
        configs = bench_configs(list(models), out, data=data, **options)  # validates every option first
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    if processes and processes > 1:
        check_processes(processes, configs[0].device, configs[0].device_map)
        return launch(processes, _argv_without(ctx, "processes"))
    results, failures = bench_many(configs, out)
    for model_out, summary in results:
        if summary is not None:  # None: a data-parallel rank other than 0 (rank 0 reports)
            _echo_summary(model_out, summary)
    if failures:
        for f in failures:
            click.echo(f"FAILED {f['model']}: {f['error']}: {f['message']}", err=True)
        raise click.ClickException(f"{len(failures)} of {len(models)} models failed (see {out}/failures.json)")


def _argv_without(ctx: click.Context, skip: str) -> list[str]:
    """This command's arguments as given, less option `skip`: what each launched process runs."""
    level = ctx.meta.get(VERBOSITY, 0)  # -v/-q (group or command) are not params: carried as their net count
    argv = ["bench", *(["-v"] * level if level > 0 else ["-q"] * -level)]
    for param in ctx.command.params:
        if not param.expose_value:
            continue
        value = ctx.params[param.name]
        if param.name == skip or value is None or value == () or value is False or value == param.default:
            continue
        if isinstance(param, click.Argument):
            argv += list(value)
        elif param.is_flag:
            argv.append(param.opts[0])
        else:
            argv += [param.opts[0], str(value)]
    return argv


def _bench_random(models, out, **given):
    """Architecture-only runs (`vlmslim.benchmarks.random_weights`): defaults live in `ArchBenchConfig`."""
    from vlmslim.benchmarks.random_weights import arch_configs, bench_architecture

    try:
        configs = arch_configs(list(models), out, **{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    for m, cfg in zip(models, configs):
        s = bench_architecture(cfg)
        e = s["efficiency"]
        click.echo(f"{m} (random weights): decode {e['decode_ms_per_token']:.2f} ms/token, prefill "
                   f"{e['ttft_s_p50']:.3f} s, {e['throughput_images_per_s']:.2f} images/s, "
                   f"{e['model_size_mb']:.0f} MB -> {cfg.out}")
