"""The per-layer plan: how many units every decoder layer keeps, decided before anything is cut.

    scores = score_layers(model, family, config, stats)       # importance: one score per unit, per layer
    plan = make_plan(model, family, config, stats, scores)    # allocation: kept units per layer

Units: GLU neurons; attention KV groups (`--head-mode groups`) or query-head slots (`query`: one slot =
one query head in every KV group). The uniform plan rounds `--glu` / `--heads` in every layer on its own
(`select.kept_width` / `kept_heads`); its total is the budget that a non-uniform allocation
(`select.ALLOCATIONS`) redistributes, so both prune exactly the same number of parameters.
`sensitivity` measures each layer's loss increase when only that layer is pruned at the uniform count
(teacher-answer loss, units masked rather than cut); `owl` reads activation outlier ratios.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from vlmslim.errors import PruningError
from vlmslim.families import Family
from vlmslim.pruning.calibrate import CalibrationStats, masked_loss, mean_answer_loss
from vlmslim.pruning.config import PruneConfig
from vlmslim.pruning.glu import glu_weights
from vlmslim.pruning.importance import HEAD_IMPORTANCE, NEURON_IMPORTANCE, outlier_ratio
from vlmslim.pruning.select import (ALLOCATIONS, allocate, kept_heads, kept_width, neuron_levels, select_head_counts,
                                    top_k_sorted, unit_levels)
from vlmslim.shapes import glu_width, head_counts, head_dim

logger = logging.getLogger(__name__)


@dataclass
class LayerScores:
    glu: list[torch.Tensor] | None  # per decoder layer: (I,) neuron scores
    heads: list[torch.Tensor] | None  # per decoder layer: (H,) query-head scores


def _attn(family: Family, layer: nn.Module, text_config) -> tuple[nn.Module, int, int, int]:
    attn = layer.get_submodule(family.attn)
    hd = head_dim(attn, text_config)
    return (attn, hd, *head_counts(family, attn, hd))


def score_layers(model: nn.Module, family: Family, config: PruneConfig, stats: CalibrationStats | None) -> LayerScores:
    """The criteria's scores for every decoder layer (pure functions of weights and statistics)."""
    tc = family.get_text_config(model.config)
    glu, heads = ([] if config.glu else None), ([] if config.heads else None)
    for i, layer in enumerate(family.decoder_layers(model)):
        g, h = score_layer(family, layer, tc, config, stats, i)
        if config.glu:
            glu.append(g)
        if config.heads:
            heads.append(h)
    return LayerScores(glu, heads)


def score_layer(family: Family, layer: nn.Module, text_config, config: PruneConfig, stats: CalibrationStats | None,
                i: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(I,) neuron scores and (H,) head scores of decoder layer `i` (None for a component not pruned).
    Streaming pruning calls it with only this layer's weights in memory."""
    glu = heads = None
    if config.glu:
        glu = NEURON_IMPORTANCE[config.importance].fn(glu_weights(family, layer.get_submodule(family.mlp)),
                                                      stats.neurons.get(i) if stats else None)
    if config.heads:
        attn, hd, _, _ = _attn(family, layer, text_config)
        o_weight = attn.get_submodule(family.o_proj).weight  # (hidden, H * hd)
        heads = HEAD_IMPORTANCE[config.head_importance].fn(o_weight, hd, stats.heads.get(i) if stats else None)
    return glu, heads


# ---------------------------------------------------------------- units per layer


def _head_units(n_q: int, n_kv: int, mode: str) -> int:
    return n_kv if mode == "groups" else n_q // n_kv


def units_to_heads(units: int, n_q: int, n_kv: int, mode: str) -> tuple[int, int]:
    """Kept units -> (query heads, KV heads)."""
    return (units * (n_q // n_kv), units) if mode == "groups" else (units * n_kv, n_kv)


def _uniform_head_units(n_q: int, n_kv: int, config: PruneConfig) -> int:
    q, kv = kept_heads(n_q, n_kv, config.heads, config.head_mode)
    return kv if config.head_mode == "groups" else q // kv


# ---------------------------------------------------------------- layer measurements for allocation


def _glu_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel())
    mask[top_k_sorted(scores, k)] = 1
    return mask  # (I,)


def _head_mask(scores: torch.Tensor, n_kv: int, q: int, kv: int, hd: int, mode: str) -> torch.Tensor:
    keep_q, _ = select_head_counts(scores, n_kv, q, kv, mode)
    mask = torch.zeros(scores.numel(), hd)
    mask[keep_q] = 1
    return mask.flatten()  # (H * hd,): the o_proj input columns of the kept query heads


def sensitivity(model: nn.Module, family: Family, stats: CalibrationStats, component: str,
                masks: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """(L,) loss increase when only layer l is pruned (its `masks[l]`), and the unpruned loss."""
    if not stats or not stats.teacher:
        raise PruningError("internal: --allocation sensitivity needs the teacher answers of the calibration set")
    base = mean_answer_loss(model, stats.teacher)
    deltas = [masked_loss(model, family, stats.teacher, i, component, m) - base for i, m in enumerate(masks)]
    logger.info("%s sensitivity (loss increase per layer, base %.4f): %s", component, base,
                ", ".join(f"{d:.4f}" for d in deltas))
    return torch.tensor(deltas, dtype=torch.float64), base


def _layer_measure(model, family, config, stats, component, scores, uniform) -> tuple[torch.Tensor | None, dict]:
    """The allocation's per-layer scores for one component ("glu" or "heads") and what to record of them."""
    needs = ALLOCATIONS[config.allocation].needs
    tc = family.get_text_config(model.config)
    layers = family.decoder_layers(model)
    if needs is None:
        return None, {}
    if needs == "sensitivity":
        if component == "glu":
            masks = [_glu_mask(s, k) for s, k in zip(scores, uniform)]
        else:
            masks = []
            for layer, s, units in zip(layers, scores, uniform):
                _, hd, n_q, n_kv = _attn(family, layer, tc)
                masks.append(_head_mask(s, n_kv, *units_to_heads(units, n_q, n_kv, config.head_mode), hd,
                                        config.head_mode))
        deltas, base = sensitivity(model, family, stats, component, masks)
        return deltas, {"layer_scores": [round(float(d), 6) for d in deltas], "layer_score": "loss increase",
                        "base_loss": round(base, 6)}
    if needs == "outliers":
        ratios = []
        for i, layer in enumerate(layers):
            if component == "glu":
                weight = layer.get_submodule(family.mlp).get_submodule(family.down_proj).weight
                ratios.append(outlier_ratio(weight, stats.neurons[i].l2))
            else:
                weight = layer.get_submodule(family.attn).get_submodule(family.o_proj).weight
                ratios.append(outlier_ratio(weight, stats.heads[i].in_l2))
        return torch.tensor(ratios, dtype=torch.float64), {"layer_scores": [round(r, 6) for r in ratios],
                                                           "layer_score": "outlier ratio"}
    raise PruningError(f"internal: allocation {config.allocation} needs {needs!r}")


# ---------------------------------------------------------------- the plan


def make_plan(model: nn.Module, family: Family, config: PruneConfig, stats: CalibrationStats | None,
              scores: LayerScores | None) -> dict:
    """Kept units per decoder layer (the manifest step's `plan`). `scores` may be None for a uniform plan
    (shapes alone decide it: `--plan-only` on an empty skeleton)."""
    tc = family.get_text_config(model.config)
    layers = family.decoder_layers(model)
    cap = config.max_layer_ratio
    plan: dict = {"allocation": config.allocation, "max_layer_ratio": cap if config.allocation != "uniform" else None,
                  "glu": None, "heads": None}
    rows = [{"layer": i} for i in range(len(layers))]
    if config.glu:
        sizes = [glu_width(family, layer.get_submodule(family.mlp)) for layer in layers]
        uniform = [kept_width(n, config.glu, config.round_to) for n in sizes]
        kept, extra = uniform, {}
        if config.allocation != "uniform":
            measure, extra = _layer_measure(model, family, config, stats, "glu", scores.glu, uniform)
            kept = allocate(config.allocation, measure, sizes, [neuron_levels(n, config.round_to, cap) for n in sizes],
                            sum(uniform), cap, option=f"--glu {config.glu:g}")
        plan["glu"] = {"unit": "neuron", "total": sum(sizes), "budget": sum(uniform), "kept_total": sum(kept),
                       "kept": kept, **extra}
        for row, n, k in zip(rows, sizes, kept):
            row.update(intermediate_size=k, intermediate_before=n)
    if config.heads:
        counts = [_attn(family, layer, tc)[2:] for layer in layers]  # (n_q, n_kv) per layer
        sizes = [_head_units(q, kv, config.head_mode) for q, kv in counts]
        uniform = [_uniform_head_units(q, kv, config) for q, kv in counts]
        kept, extra = uniform, {}
        if config.allocation != "uniform":
            measure, extra = _layer_measure(model, family, config, stats, "heads", scores.heads, uniform)
            kept = allocate(config.allocation, measure, sizes, [unit_levels(n, cap) for n in sizes], sum(uniform), cap,
                            option=f"--heads {config.heads:g}")
        unit = "kv_group" if config.head_mode == "groups" else "query_head_per_group"
        plan["heads"] = {"unit": unit, "total": sum(sizes), "budget": sum(uniform), "kept_total": sum(kept),
                         "kept": kept, **extra}
        for row, (n_q, n_kv), k in zip(rows, counts, kept):
            q, kv = units_to_heads(k, n_q, n_kv, config.head_mode)
            row.update(num_attention_heads=q, num_key_value_heads=kv, heads_before=n_q, kv_heads_before=n_kv)
    plan["layers"] = rows
    return plan
