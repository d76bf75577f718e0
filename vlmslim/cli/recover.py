"""`vlmslim recover`: distil a pruned checkpoint back toward its teacher."""

from __future__ import annotations

import click

from vlmslim.cli import cli, handle_errors

# Spelled out so `vlmslim -h` stays free of torch; tests/test_recovery.py checks they equal the registry.
RECOVER_METHODS = ("kd", "lora-kd", "projector")
RECOVER_DTYPES = ("bfloat16", "float16", "float32")


@cli.command("recover")
@click.argument("student")
@click.option("--teacher", required=True, help="The model the student was pruned from (hub id, dir, 'demo').")
@click.option("--data", required=True, type=click.Path(), help="A `vlmslim data` directory: the recovery images "
              "(no labels needed; never the evaluation split).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory.")
@click.option("--method", type=click.Choice(RECOVER_METHODS), default=None,
              help="kd: language model + projector; lora-kd: LoRA merged into the weights + projector; "
                   "projector: projector only [default: kd].")
@click.option("--steps", type=int, default=None, help="Optimizer steps [default: 300].")
@click.option("--batch-size", type=int, default=None, help="Samples per step [default: 16].")
@click.option("--lr", type=float, default=None, help="Peak learning rate (warm-up, then cosine) [default: 5e-4].")
@click.option("--warmup", type=int, default=None, help="Warm-up steps [default: 10%% of --steps].")
@click.option("--max-length", type=int, default=None, help="Prompt + answer tokens per sample [default: 1024].")
@click.option("--max-new-tokens", type=int, default=None, help="Length cap of the teacher's answers [default: 64].")
@click.option("--lora-rank", type=int, default=None, help="lora-kd: adapter rank [default: 16].")
@click.option("--lora-alpha", type=float, default=None, help="lora-kd: adapter scale numerator [default: 2 x rank].")
@click.option("--kd-temperature", type=float, default=None, help="Softmax temperature of the KL [default: 1].")
@click.option("--ce-weight", type=float, default=None, help="Weight of a CE loss on the teacher's tokens [default: 0].")
@click.option("--hidden-weight", type=float, default=None,
              help="Weight of a hidden-state MSE on decoder layers whose outputs align [default: 0].")
@click.option("--gradient-checkpointing", is_flag=True, default=None, help="Recompute activations (less memory).")
@click.option("--save-every", type=int, default=None,
              help="Write a resume state every N steps to OUT.resume/; a rerun continues from it.")
@click.option("--heldout", multiple=True, type=click.Path(), metavar="DIR",
              help="Evaluation data the recovery data must not share an image with. Repeatable.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Teacher-answer cache [default: $VLMSLIM_CACHE or ~/.cache/vlmslim].")
@click.option("--seed", type=int, default=None, help="Data order and LoRA init [default: 0].")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 [default: cpu].")
@click.option("--dtype", type=click.Choice(RECOVER_DTYPES), default=None,
              help="Training dtype [default: as saved; bfloat16 on a GPU is the usual choice].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@handle_errors
def recover_cmd(student, teacher, data, out, overwrite, no_progress, heldout, **options):
    """Distil STUDENT (a pruned checkpoint) toward TEACHER on the teacher's own answers.

    \b
    vlmslim data synthetic --out data/train --n 1000 --seed 1
    vlmslim recover ckpt/heads25 --teacher demo --data data/train --out ckpt/heads25-kd --steps 60 --lr 1e-3

    The output keeps the student's shapes, loads without peft, and carries loss.jsonl + loss.png; a
    benchmark refuses data that shares an image with the recovery data.
    """
    from vlmslim.recovery import RecoverConfig, recover_checkpoint

    given = {k: v for k, v in options.items() if v is not None}
    try:
        config = RecoverConfig(**given, heldout=tuple(heldout), progress=not no_progress)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    path, manifest = recover_checkpoint(student, teacher, data, out, config, overwrite=overwrite)
    step = manifest["steps"][-1]
    before, after = step["probe"]["before"], step["probe"]["after"]
    click.echo(f"{path}: {step['method']} {config.steps} steps; KD loss {before['kd']:.4g} -> {after['kd']:.4g}, "
               f"teacher agreement {before['agreement']:.3f} -> {after['agreement']:.3f} "
               f"(first {step['probe']['n_samples']} samples); "
               f"{step['seconds']:.0f} s, {step['tokens_per_s']:.0f} tokens/s; "
               f"reload max |dlogit| {step['reload_max_abs_diff']:.2g}")
