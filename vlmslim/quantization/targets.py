"""Targets: which Linear layers a quantization step converts, as exact dotted module names.

A target names components of the family adapter (`vlmslim.families`); `--keep` / `--also` move single
modules (or glob patterns) out of / into it. The result is an explicit list of exact `nn.Linear` names
(what gets quantized in memory) plus the `llm_int8_skip_modules` list that makes stock
`from_pretrained` rebuild exactly the same modules. Transformers 5 reads that list as prefix/regex/suffix
patterns and lets it *replace* the default (lm_head) — so it is computed here from the selection and
checked against transformers' own matcher, never written by hand.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

from torch import nn

from vlmslim.census import tied_parameters
from vlmslim.errors import QuantizationError
from vlmslim.families import get_family

logger = logging.getLogger(__name__)

# Component names from `vlmslim.families.COMPONENTS`; "other" = parameters outside every component.
TARGETS: dict[str, tuple[str, ...]] = {
    "language": ("language",),  # the decoder only: vision tower, projector and lm_head stay 16-bit
    "vision": ("vision",),  # the vision tower only
    "all": ("vision", "projector", "language", "other"),  # everything but lm_head
}
DEFAULT_TARGET = "language"


@dataclass(frozen=True)
class Target:
    """A resolved target: what is quantized, what is left float and why, and the config skip list."""

    name: str
    keep: tuple[str, ...]
    also: tuple[str, ...]
    quantize: tuple[str, ...]  # exact nn.Linear module names, in model order
    skip_modules: tuple[str, ...]  # for BitsAndBytesConfig(llm_int8_skip_modules=...)
    not_exact_linear: tuple[str, ...] = ()  # Linear subclasses in scope: bnb never converts them
    kept_fp32_by_class: tuple[str, ...] = ()  # in scope, but the model class pins them (`_keep_in_fp32_modules`)

    def to_dict(self) -> dict:
        return {"name": self.name, "keep": list(self.keep), "also": list(self.also),
                "quantized_modules": list(self.quantize), "skip_modules": list(self.skip_modules),
                "left_float": {"not_exact_linear": list(self.not_exact_linear),
                               "kept_fp32_by_model_class": list(self.kept_fp32_by_class)}}


def matches(pattern: str, name: str) -> bool:
    """A module name or any module below it; glob patterns (`*.mlp.down_proj`) when `*?[` appear."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")
    return name == pattern or name.startswith(pattern + ".")


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _matching(patterns, names, option: str) -> dict[str, list[str]]:
    out = {}
    for p in patterns:
        hit = [n for n in names if matches(p, n)]
        if not hit:
            sample = ", ".join(list(names)[:3])
            raise QuantizationError(f"{option} {p!r} matches no Linear layer (full dotted names, e.g. {sample})")
        out[p] = hit
    return out


def _convertible_by_transformers(model: nn.Module, skip: list[str]) -> set[str]:
    """The Linear names stock `from_pretrained` would convert with this skip list (its own matcher)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    pinned = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return {n for n, m in model.named_modules()
            if type(m) is nn.Linear and should_convert_module(n, skip + pinned)}


def skip_list(model: nn.Module, quantize: set[str]) -> list[str]:
    """The top-most modules that hold float Linears but no quantized one (full dotted names)."""
    def ancestors(name):
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}

    with_quantized = set().union(*(ancestors(n) for n in quantize)) if quantize else set()
    with_float = set().union(*(ancestors(n) for n, m in model.named_modules()
                               if type(m) is nn.Linear and n not in quantize))
    out: list[str] = []
    for name, _ in model.named_modules():  # pre-order: a parent is decided before its children
        if not name or any(name.startswith(s + ".") for s in out):
            continue
        if name in with_float and name not in with_quantized:
            out.append(name)
    return out


def resolve_target(model: nn.Module, target: str = DEFAULT_TARGET, keep=(), also=()) -> Target:
    """Resolve a target name plus `--keep`/`--also` exceptions to exact Linear names; errors name the option."""
    if target not in TARGETS:
        raise QuantizationError(f"unknown target {target!r}; choose from {', '.join(sorted(TARGETS))}")
    family = get_family(model)
    linears = _linears(model)
    in_scope = {n for n in linears if family.component_of(n) in TARGETS[target]}

    kept = _matching(keep, linears, "--keep")
    for p, hit in kept.items():
        if not set(hit) & in_scope:
            raise QuantizationError(f"--keep {p!r} matches only layers that target {target!r} leaves unquantized")
    added = _matching(also, linears, "--also")
    for p, hit in added.items():
        if set(hit) <= in_scope:
            raise QuantizationError(f"--also {p!r} matches only layers that target {target!r} quantizes already")
    tied = {name.removesuffix(".weight") for pair in tied_parameters(model) for name in pair}
    for p, hit in added.items():
        if set(hit) & tied:
            raise QuantizationError(f"--also {p!r} includes {sorted(set(hit) & tied)[0]}, whose weight is tied "
                                    "to the input embeddings; quantizing it would untie them")

    removed = {n for hit in kept.values() for n in hit}
    extra = {n for hit in added.values() for n in hit}
    chosen = [n for n in linears if (n in in_scope or n in extra) and n not in removed]
    not_exact = tuple(n for n in chosen if type(linears[n]) is not nn.Linear)
    if not_exact:
        logger.warning("%d Linear subclass layer(s) stay float (bitsandbytes converts exact nn.Linear only): %s",
                       len(not_exact), ", ".join(not_exact[:5]))
    chosen = [n for n in chosen if type(linears[n]) is nn.Linear]

    # Stock from_pretrained adds the class's `_keep_in_fp32_modules` to any skip list (e.g. BLIP-2's
    # qformer): leave those float in memory too, so the saved checkpoint reloads the same way.
    allowed = _convertible_by_transformers(model, [])
    pinned = tuple(n for n in chosen if n not in allowed)
    if pinned:
        logger.warning("%d layer(s) stay float because %s keeps them in fp32: %s", len(pinned),
                       type(model).__name__, ", ".join(pinned[:5]))
    chosen = [n for n in chosen if n in allowed]
    if not chosen:
        raise QuantizationError(f"target {target!r} selects no quantizable Linear layer in this model")

    skip = skip_list(model, set(chosen))
    if _convertible_by_transformers(model, skip) != set(chosen):  # our list vs transformers' matcher
        raise QuantizationError(f"internal error: the skip list {skip} would make from_pretrained convert a "
                                "different set of layers than the target; please report this")
    return Target(target, tuple(keep), tuple(also), tuple(chosen), tuple(skip), not_exact, pinned)


def shape_errors(model: nn.Module, names, recipe) -> list[str]:
    """'name (out x in)' for every selected Linear the recipe's kernels cannot take."""
    out = []
    for n in names:
        m = model.get_submodule(n)
        if (err := recipe.shape_error(m.out_features, m.in_features)) is not None:
            out.append(f"{n} ({err})")
    return out


def check_shapes(model: nn.Module, target: Target, recipe) -> None:
    """Fail before quantizing (not deep inside bnb at the first forward) with what to do instead."""
    bad = shape_errors(model, target.quantize, recipe)
    if bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        multiple = max(64, getattr(recipe, "group_size", 64))  # a pruned width of this multiple fits
        raise QuantizationError(
            f"{recipe.name} needs {recipe.shape_rule} for every quantized Linear; {len(bad)} layer(s) do not: "
            f"{shown}. Prune with --round-to {multiple}, leave them out with --keep, or use a recipe that takes "
            "any shape (int8, int8dq, fp8)"
        )
