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


def main() -> None:
    cli(prog_name="vlmslim")
