"""The step registry of recipes: what a variant's `steps:` may contain and how each one runs.

Each entry maps a recipe key (`prune`, `quantize`, `recover`, `tokens`) onto the library function the CLI
command of the same name calls, so a sweep and a shell loop of `vlmslim prune/quantize/recover/bench` make
the same artifacts. A checkpoint step turns a checkpoint into a new checkpoint dir; a bench-time step
(`tokens`) only adds bench options. A new step is one more `StepKind`: its option names, a parser to a
validated config, and a runner.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vlmslim.pruning import PruneConfig, prune_checkpoint
from vlmslim.quantization import QuantSpec, make_recipe, quantize
from vlmslim.recovery import RecoverConfig, recover_checkpoint
from vlmslim.recovery.config import RUN_ONLY
from vlmslim.tokens import TokenSpec


@dataclass(frozen=True)
class StepContext:
    """What a checkpoint step may need besides its input: the recipe's base model and data, the device."""

    base_model: str  # resolved source of the recipe's `model`
    data: Path  # the evaluation set
    calibration: Path | None  # the recipe's `calibration` set, if any
    recovery: Path | None  # the recipe's `recovery` set (training images of `recover`), if any
    device: str  # one concrete device ("cpu", "cuda", "cuda:1")
    cache_dir: Path | None = None  # the sweep's cache (teacher answers of `recover`); None: the user's cache


@dataclass(frozen=True)
class StepKind:
    name: str
    keys: tuple[str, ...]  # accepted option names (anything else is a schema error naming these)
    parse: Callable[[dict], object]  # options -> validated config (ValueError naming the option)
    checkpoint: bool  # True: checkpoint -> checkpoint; False: options applied at bench time
    run: Callable[[str, Path, object, StepContext], None] | None = None  # (input, out, config, ctx)
    needs_calibration: Callable[[object], bool] = lambda config: False
    needs_recovery: bool = False  # trains on the recipe's `recovery` set, toward the recipe's model
    bench_options: Callable[[object], dict] = lambda config: {}
    payload: Callable[[object], dict] = lambda config: _jsonable(dataclasses.asdict(config))
    required: tuple[str, ...] = ()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# ---------------------------------------------------------------- prune


PRUNE_KEYS = tuple(f.name for f in dataclasses.fields(PruneConfig) if f.name != "calibration")


def _parse_prune(options: dict) -> PruneConfig:
    return PruneConfig(**options)


def _run_prune(src: str, out: Path, config: PruneConfig, ctx: StepContext) -> None:
    calibration = str(ctx.calibration) if config.needs_calibration else None
    prune_checkpoint(src, out, dataclasses.replace(config, calibration=calibration), device=ctx.device,
                     overwrite=True)


def _prune_payload(config: PruneConfig) -> dict:
    d = config.to_dict()
    d.pop("calibration")  # the sweep keys the calibration set by its own stamp, not its path
    return d


# ---------------------------------------------------------------- quantize


_RECIPE_OPTIONS = ("double_quant", "compute_dtype", "int8_threshold")
QUANTIZE_KEYS = ("recipe", "target", "keep", "also", *_RECIPE_OPTIONS)


def _parse_quantize(options: dict) -> QuantSpec:
    options = dict(options)
    name = options.pop("recipe")
    recipe = make_recipe(str(name), **{k: options.pop(k) for k in _RECIPE_OPTIONS if k in options})
    for key in ("keep", "also"):
        if isinstance(options.get(key), str):
            options[key] = [options[key]]
    return QuantSpec(recipe, **options)


def _run_quantize(src: str, out: Path, spec: QuantSpec, ctx: StepContext) -> None:
    quantize(src, out, spec, device=ctx.device, overwrite=True)


def _quantize_payload(spec: QuantSpec) -> dict:
    return {"recipe": spec.recipe.params(), "target": spec.target, "keep": list(spec.keep), "also": list(spec.also)}


# ---------------------------------------------------------------- recover


# Where and how fast a recovery runs comes from the sweep (device) or is the sweep's business (held-out
# set = the recipe's `data`, resume state, cache); the rest is what the step computes.
RECOVER_KEYS = tuple(f.name for f in dataclasses.fields(RecoverConfig) if f.name not in RUN_ONLY)


def _parse_recover(options: dict) -> RecoverConfig:
    return RecoverConfig(**options, progress=False)


def _run_recover(src: str, out: Path, config: RecoverConfig, ctx: StepContext) -> None:
    # teacher = the recipe's model; the evaluation set is held out (recover refuses a shared image)
    config = dataclasses.replace(config, device=ctx.device, heldout=(str(ctx.data),),
                                 cache_dir=str(ctx.cache_dir) if ctx.cache_dir else None)
    recover_checkpoint(src, ctx.base_model, ctx.recovery, out, config, overwrite=True)


def _recover_payload(config: RecoverConfig) -> dict:
    return config.fingerprint()


# ---------------------------------------------------------------- tokens (at bench time)


TOKENS_KEYS = ("image_tokens", "token_method")


def _parse_tokens(options: dict) -> TokenSpec:
    return TokenSpec(options["image_tokens"], options.get("token_method", "pool"))


STEPS: dict[str, StepKind] = {
    "prune": StepKind("prune", PRUNE_KEYS, _parse_prune, checkpoint=True, run=_run_prune,
                      needs_calibration=lambda c: c.needs_calibration, payload=_prune_payload),
    "quantize": StepKind("quantize", QUANTIZE_KEYS, _parse_quantize, checkpoint=True, run=_run_quantize,
                         payload=_quantize_payload, required=("recipe",)),
    "recover": StepKind("recover", RECOVER_KEYS, _parse_recover, checkpoint=True, run=_run_recover,
                        needs_recovery=True, payload=_recover_payload),
    # Fewer image tokens into the language model (vlmslim.tokens): the checkpoint stays the source's.
    "tokens": StepKind("tokens", TOKENS_KEYS, _parse_tokens, checkpoint=False, required=("image_tokens",),
                       bench_options=lambda t: {"image_tokens": t.k, "token_method": t.method},
                       payload=lambda t: {"image_tokens": t.k, "token_method": t.method}),
}
