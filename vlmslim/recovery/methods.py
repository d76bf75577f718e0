"""Recovery methods: which parameters train, and how the trained model becomes a plain checkpoint.

A method is a registry entry: `prepare(model, config) -> model to train` (freezes everything, then
unfreezes or adds what it trains) and `finish(model) -> plain model` (LoRA merges its adapters into the
Linear weights, so the output loads without peft and keeps the pruned shapes). The vision tower is never
trained: pruning does not touch it, and the teacher's image features are the ones the student must read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from torch import nn

from vlmslim.families import get_family
from vlmslim.recovery.config import RecoverConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    prepare: Callable[[nn.Module, RecoverConfig], nn.Module]
    finish: Callable[[nn.Module], nn.Module] | None = None  # None: the trained model is already plain


def _unfreeze(model: nn.Module, components: tuple[str, ...]) -> None:
    family = get_family(model)
    for name, p in model.named_parameters():
        p.requires_grad_(family.component_of(name) in components)


def _kd(model: nn.Module, config: RecoverConfig) -> nn.Module:
    _unfreeze(model, ("language", "lm_head", "projector"))
    return model


def _projector(model: nn.Module, config: RecoverConfig) -> nn.Module:
    _unfreeze(model, ("projector",))
    return model


def language_linears(model: nn.Module) -> list[str]:
    """Full names of the language model's Linear layers (q/k/v/o, gate/up/down of every layer)."""
    family = get_family(model)
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and family.component_of(n) == "language"]


def _lora(model: nn.Module, config: RecoverConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = language_linears(model)
    _unfreeze(model, ())
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.alpha, lora_dropout=0.0, bias="none",
                      target_modules=targets)
    wrapped = get_peft_model(model, lora)  # freezes every non-LoRA parameter
    family = get_family(model)
    for name, p in model.named_parameters():  # the projector trains in full (it is small)
        if family.component_of(name) == "projector":
            p.requires_grad_(True)
    logger.info("LoRA rank %d (alpha %g) on %d Linear layers of the language model", config.lora_rank,
                config.alpha, len(targets))
    return wrapped


def _merge(model: nn.Module) -> nn.Module:
    """Fold the adapters into the weights: W + (alpha / r) B A, back to plain `nn.Linear` layers."""
    return model.merge_and_unload()


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("kd", "full distillation of the language model, its lm_head and the projector", _kd),
    Method("lora-kd", "LoRA on the language model's Linear layers + the projector, merged before saving",
           _lora, _merge),
    Method("projector", "the projector alone (enough for light pruning, arXiv 2507.20749)", _projector),
)}


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
