"""Command line: one thin click command per pipeline step, each calling a library function.

Commands parse options and turn expected library errors (`VlmslimError`) into one-line
`click.ClickException`s; no logic lives here. This module holds the group and the shared error
handling; the commands live in `data.py` (data), `models.py` (inspect, prune, quantize),
`bench.py` (bench), `figures.py` and `demo.py`, registered on import at the bottom.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys

import click

from vlmslim import __version__
from vlmslim.errors import VlmslimError

# Choices of registries that live in torch-importing modules, spelled out so `vlmslim -h` and the
# figures/data commands start without torch; tests/test_cli.py checks they equal the registries.
NEURON_CRITERIA = ("activation", "hybrid", "l2", "maw", "pon", "taylor", "vow")
HEAD_CRITERIA = ("activation", "o_norm", "taylor")
ALLOCATIONS = ("owl", "sensitivity", "uniform")
HEAD_MODES = ("groups", "query")
DEFAULT_CALIBRATION_SAMPLES = 32
QUANT_TARGETS = ("all", "language", "vision")
DEFAULT_TARGET = "language"
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
TOKEN_METHODS = ("pool", "random", "visionzip")
QUANT_RECIPES = ("fp4", "fp8", "int4wo", "int8", "int8dq", "int8wo", "nf4")
BNB_RECIPES = ("fp4", "int8", "nf4")
DEMO_VARIANTS = ("base", "glu30", "glu50", "glu70", "glu80", "heads25", "heads50", "glu30-heads25", "drop1",
                 "heads25-kd", "drop1-kd", "glu80-kd", "int8", "nf4", "glu30-nf4", "int4wo", "int8dq", "tokens36", "tokens16", "tokens16-visionzip", "tokens16-random", "tokens4",
                 "glu30-nf4-tokens16")


def _setup_logging(verbosity: int) -> None:
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 0 else logging.ERROR)
    if verbosity < 0:  # -q also silences the progress bars of datasets / huggingface_hub
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    # transformers / datasets are chatty at INFO; keep them at WARNING unless -vv.
    for noisy in ("transformers", "datasets", "urllib3", "filelock", "codecarbon", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)


# OS errors the user fixes by freeing space or choosing another place. Atomic outputs and results dirs
# already raise them as `OutputWriteError` (vlmslim.io.write_errors); this catches the rest (a dataset
# being staged, any other write) so no command prints a traceback for a full or read-only disk.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def handle_errors(fn):
    """Turn expected library errors into one-line CLI errors (exit 1), keeping tracebacks for bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VlmslimError as e:
            raise click.ClickException(str(e)) from e
        except OSError as e:
            if e.errno not in WRITE_ERRNOS:
                raise
            # A failed write() on an open file carries no file name: name the command's output instead.
            path = e.filename or kwargs.get("out") or "the output"
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)  # else read-only or not permitted: space won't help
            advice = "free space (or choose another --out)" if full else "choose an --out on a writable disk"
            raise click.ClickException(f"cannot write {path}: {os.strerror(e.errno)}; {advice} and re-run the "
                                       "same command") from e

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


_VERBOSITY = "vlmslim.verbosity"  # ctx.meta key: -v minus -q, summed over the group and the command


def _add_verbosity(ctx: click.Context, param: click.Parameter, count: int) -> None:
    if not count:
        return
    step = count if param.name == "verbose" else -count
    ctx.meta[_VERBOSITY] = ctx.meta.get(_VERBOSITY, 0) + step  # ctx.meta is shared by nested contexts
    _setup_logging(ctx.meta[_VERBOSITY])


def verbosity_options(command: click.Command) -> click.Command:
    """-v/-q on `command` too, so `vlmslim prune ... -q` works like `vlmslim -q prune ...`; both add up."""
    for names, help_text in ((("-v", "--verbose"), "More log output (-vv for library debug logs)."),
                             (("-q", "--quiet"), "Less log output.")):
        command.params.append(click.Option(names, count=True, expose_value=False, callback=_add_verbosity,
                                           help=help_text))
    return command


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vlmslim")
@click.option("-v", "--verbose", count=True, expose_value=False, callback=_add_verbosity,
              help="More log output (-vv for library debug logs); also after the command.")
@click.option("-q", "--quiet", count=True, expose_value=False, callback=_add_verbosity,
              help="Less log output; also after the command.")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Prune, quantize and benchmark vision-language models.

    \b
    Steps: data -> prune -> quantize -> bench -> figures.  `vlmslim demo` runs them all
    on the embedded miniature VLM on a CPU.
    """
    if _VERBOSITY not in ctx.meta:
        _setup_logging(0)


def main() -> None:
    cli(prog_name="vlmslim")


# Registers the commands on `cli` (each module imports `cli` and `handle_errors` from here).
from vlmslim.cli import bench, data, demo, figures, models, recover, sweep, table  # noqa: E402,F401
from vlmslim.cli.figures import _COST_CHOICES  # noqa: E402,F401  (tests check it mirrors the registry)


def _with_verbosity_everywhere(group: click.Group) -> None:
    for command in group.commands.values():
        verbosity_options(command)
        if isinstance(command, click.Group):
            _with_verbosity_everywhere(command)


_with_verbosity_everywhere(cli)
