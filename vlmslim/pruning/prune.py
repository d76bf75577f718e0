"""`prune()`: score -> plan (kept counts per layer) -> select -> cut over every decoder layer in memory.

    model, step = prune(model, processor, PruneConfig(glu=0.3, heads=0.25))
    report = plan_pruning(model, processor, PruneConfig(glu=0.3, allocation="owl"), calibration)  # no cut

The checkpoint-to-checkpoint step (`vlmslim prune`) is `vlmslim.pruning.step.prune_checkpoint`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import replace

import torch
from torch import nn
from tqdm import tqdm

from vlmslim.census import census, quantized_kinds
from vlmslim.errors import PruningError
from vlmslim.families import Family, get_family
from vlmslim.loading import empty_model
from vlmslim.pruning.calibrate import (CalibrationStats, calibration_record, collect_stats, collect_taylor,
                                       load_calibration, pick_samples, teacher_answers, teacher_record)
from vlmslim.pruning.config import PruneConfig
from vlmslim.pruning.importance import HEAD_IMPORTANCE, NEURON_IMPORTANCE, HeadStats, NeuronStats
from vlmslim.pruning.layers import drop_decoder_layers, most_redundant_layers, trim_vision, vision_keep_count
from vlmslim.pruning.plan import LayerScores, make_plan, score_layers
from vlmslim.pruning.select import ALLOCATIONS, kept_heads, kept_width, select_head_counts, top_k_sorted
from vlmslim.pruning.surgery import sync_config
from vlmslim.shapes import architecture_of, glu_width, head_counts, head_dim, prune_glu, prune_heads

logger = logging.getLogger(__name__)

def indices_sha256(idx: torch.Tensor) -> str:
    """Hash of kept indices (int64 little-endian bytes), recorded instead of thousands of neuron ids."""
    return hashlib.sha256(idx.to(torch.int64).cpu().numpy().astype("<i8").tobytes()).hexdigest()


def param_counts(model: nn.Module) -> dict[str, int]:
    return {comp: c["params"] for comp, c in census(model)["components"].items()}


def check_request(model: nn.Module, config: PruneConfig) -> Family:
    """Everything that can be refused from shapes alone, before any scoring, calibration or surgery.
    Runs on empty (meta) skeletons too, so the CLI refuses before loading weights."""
    family = get_family(model)
    quantized = quantized_kinds(model)
    if quantized or getattr(model.config, "quantization_config", None) is not None:
        raise PruningError(f"the model is quantized ({', '.join(quantized) or 'quantization_config'}); "
                           "prune the 16-bit checkpoint, then quantize the pruned one")
    if config.glu and not family.has_glu:
        alternative = "--drop-layers" if family.heads_unsupported else "--heads or --drop-layers"
        raise PruningError(f"--glu: {family.model_type} has no GLU MLP (its decoder MLP is a plain 2-layer MLP); "
                           f"use {alternative}")
    if config.heads and family.heads_unsupported:
        raise PruningError(f"--heads: not supported for {family.model_type}: {family.heads_unsupported}; "
                           "use --drop-layers")
    tc = family.get_text_config(model.config)
    layers = family.decoder_layers(model)
    for layer in layers:
        if config.glu:
            kept_width(glu_width(family, layer.get_submodule(family.mlp)), config.glu, config.round_to)
        if config.heads:
            attn = layer.get_submodule(family.attn)
            kept_heads(*head_counts(family, attn, head_dim(attn, tc)), config.heads, config.head_mode)
    if isinstance(config.drop_layers, tuple):
        bad = [i for i in config.drop_layers if i >= len(layers)]
        if bad or len(config.drop_layers) >= len(layers):
            raise PruningError(f"--drop-layers {','.join(map(str, config.drop_layers))}: the model has layers "
                               f"0..{len(layers) - 1} and must keep at least one")
    elif config.drop_layers >= len(layers):
        raise PruningError(f"--drop-layers {config.drop_layers}: the model has {len(layers)} decoder layers; "
                           f"drop at most {len(layers) - 1}")
    if config.trim_vision:
        vision_keep_count(model, family)
    return family


def _calibrate(model, family, processor, config: PruneConfig, calibration) -> CalibrationStats | None:
    if not config.needs_calibration:
        if calibration is not None or config.calibration:
            logger.warning("calibration data given but no option uses it (weight criteria, explicit layers)")
        return None
    if calibration is None and config.calibration:
        calibration = load_calibration(config.calibration)
    if calibration is None:
        raise PruningError(config.missing_calibration_message())
    glu_crit, head_crit = NEURON_IMPORTANCE[config.importance], HEAD_IMPORTANCE[config.head_importance]
    owl = ALLOCATIONS[config.allocation].needs == "outliers"
    neurons = bool(config.glu) and ((glu_crit.needs_calibration and not glu_crit.needs_gradients) or owl)
    heads = bool(config.heads) and ((head_crit.needs_calibration and not head_crit.needs_gradients) or owl)
    layers = isinstance(config.drop_layers, int) and config.drop_layers > 0
    if neurons or heads or layers:
        stats = collect_stats(model, family, processor, calibration, config.calibration_samples, config.seed,
                              neurons=neurons, heads=heads, layers=layers)
    else:  # only the teacher's answers are needed
        if processor is None:
            raise PruningError("calibration runs the model's processor on images, and this model has none; "
                               "use a weight criterion and --allocation uniform")
        samples = pick_samples(calibration, config.calibration_samples, config.seed)
        stats = CalibrationStats({}, {}, None, 0, calibration_record(calibration, samples))
    if config.needs_teacher:
        samples = pick_samples(calibration, config.calibration_samples, config.seed)
        stats.teacher = teacher_answers(model, family, processor, calibration, samples, config.teacher_tokens)
        stats.record["teacher_answers"] = teacher_record(stats.teacher, config.teacher_tokens)
        taylor_glu = bool(config.glu) and glu_crit.needs_gradients
        taylor_heads = bool(config.heads) and head_crit.needs_gradients
        if taylor_glu or taylor_heads:
            glu, attn = collect_taylor(model, family, stats.teacher, taylor_glu, taylor_heads)
            for i, t in glu.items():
                stats.neurons[i] = replace(stats.neurons.get(i, NeuronStats()), taylor=t)
            for i, t in attn.items():
                stats.heads[i] = replace(stats.heads.get(i, HeadStats()), taylor=t)
    return stats


def _planned(model: nn.Module, processor, config: PruneConfig, calibration, need_scores: bool):
    """Shared by `prune` and `plan_pruning`: refusals, calibration, scores, the per-layer plan."""
    family = check_request(model, config)
    stats = _calibrate(model, family, processor, config, calibration)
    uniform = config.allocation == "uniform"
    scores = score_layers(model, family, config, stats) if need_scores or not uniform else None
    return family, stats, scores, make_plan(model, family, config, stats, scores)


def cut_to_plan(model: nn.Module, family: Family, plan: dict, scores: LayerScores | None,
                head_mode: str) -> tuple[list[dict], list[dict]]:
    """Cut every decoder layer to its planned counts, keeping the highest-scoring units (the first ones
    when `scores` is None: shapes only, e.g. an empty skeleton). Returns the manifest's kept records."""
    tc = family.get_text_config(model.config)
    kept_mlp, kept_attn = [], []
    for i, layer in enumerate(tqdm(family.decoder_layers(model), desc="pruning layers", unit="layer", disable=None)):
        mlp, attn = cut_layer(family, layer, tc, plan, i, scores.glu[i] if scores and plan["glu"] else None,
                              scores.heads[i] if scores and plan["heads"] else None, head_mode)
        kept_mlp += [mlp] if mlp else []
        kept_attn += [attn] if attn else []
    return kept_records(kept_mlp, kept_attn)


def cut_layer(family: Family, layer: nn.Module, text_config, plan: dict, i: int, glu_scores: torch.Tensor | None,
              head_scores: torch.Tensor | None, head_mode: str) -> tuple[dict | None, dict | None]:
    """Cut decoder layer `i` to its planned counts, keeping the highest-scoring units (the first ones when
    the scores are None: shapes only). Returns its (mlp, attention) kept records (None: not pruned)."""
    row = plan["layers"][i]
    kept_mlp = kept_attn = None
    if plan["glu"]:
        mlp = layer.get_submodule(family.mlp)
        s = glu_scores if glu_scores is not None else torch.zeros(glu_width(family, mlp))
        keep = top_k_sorted(s, row["intermediate_size"])
        prune_glu(family, mlp, keep)
        kept_mlp = {"layer": i, "kept": keep.numel(), "sha256": indices_sha256(keep)}
    if plan["heads"]:
        attn = layer.get_submodule(family.attn)
        hd = head_dim(attn, text_config)
        n_q, n_kv = head_counts(family, attn, hd)
        s = head_scores if head_scores is not None else torch.zeros(n_q)
        keep_q, keep_kv = select_head_counts(s, n_kv, row["num_attention_heads"], row["num_key_value_heads"],
                                             head_mode)
        prune_heads(family, attn, keep_q, keep_kv, hd)
        kept_attn = {"layer": i, "q_heads": keep_q.tolist(), "kv_heads": keep_kv.tolist(), "head_dim": hd}
    return kept_mlp, kept_attn


def kept_records(kept_mlp: list[dict], kept_attn: list[dict]) -> tuple[list[dict], list[dict]]:
    """The manifest's kept records of every layer (warns about attention widths bnb 4-bit refuses)."""
    odd = sorted({len(a["q_heads"]) * a["head_dim"] for a in kept_attn if len(a["q_heads"]) * a["head_dim"] % 64})
    if odd:
        logger.warning("kept attention widths %s (heads x head_dim) are not multiples of 64: bitsandbytes 4-bit "
                       "refuses such o_proj layers on CPU and takes slow paths on GPU", odd)
    for a in kept_attn:
        del a["head_dim"]
    return kept_mlp, kept_attn


def _layers_to_drop(config: PruneConfig, stats: CalibrationStats | None) -> list[int]:
    if isinstance(config.drop_layers, tuple):
        return list(config.drop_layers)
    return most_redundant_layers(stats.layer_similarity, config.drop_layers) if config.drop_layers else []


@torch.no_grad()
def prune(model: nn.Module, processor, config: PruneConfig, calibration=None) -> tuple[nn.Module, dict]:
    """Prune `model` in place; returns it and the manifest step record.

    `calibration`: a dataset (`.samples`, `.open_image`) for activation / gradient criteria, non-uniform
    allocation or `drop_layers=N`; when None, `config.calibration` (a directory) is read.
    """
    started = time.perf_counter()
    logger.info("pruning %s with %s", get_family(model).model_type, config.to_dict())
    if config.is_noop:
        logger.warning("nothing to prune: every ratio is 0 and no layers are dropped")
    before = param_counts(model)
    family, stats, scores, plan = _planned(model, processor, config, calibration, need_scores=True)
    kept_mlp, kept_attn = cut_to_plan(model, family, plan, scores, config.head_mode)
    step = step_record(config, stats, plan, kept_mlp, kept_attn)
    if config.drop_layers:
        drop = _layers_to_drop(config, stats)
        if not isinstance(config.drop_layers, tuple):
            step["layer_similarity"] = [round(v, 6) for v in stats.layer_similarity.tolist()]
        drop_decoder_layers(model, family, drop)
        step["dropped_layers"] = drop
    if config.trim_vision:
        step["vision_layers_removed"] = trim_vision(model, family)
    step["stock_loadable"] = sync_config(model)
    step["params_before"] = before
    step["params_after"] = param_counts(model)
    step["seconds"] = round(time.perf_counter() - started, 3)
    logger.info("params %s -> %s", f"{sum(before.values()):,}", f"{sum(step['params_after'].values()):,}")
    return model, step


@torch.no_grad()
def plan_pruning(model: nn.Module, processor, config: PruneConfig, calibration=None,
                 dtype: torch.dtype | None = None) -> dict:
    """What `prune` would do, without cutting `model`: the per-layer plan and the parameter / byte budget
    (census of an empty skeleton cut to the plan, at `dtype`, default the model's). `model` may itself be
    an empty skeleton when the plan needs no data (uniform allocation, weight criteria, explicit layers)."""
    family, stats, _, plan = _planned(model, processor, config, calibration, need_scores=False)
    dtype = dtype or next(model.parameters()).dtype
    skeleton = empty_model(copy.deepcopy(model.config), architecture_of(model), cls=type(model)).to(dtype)
    before = census(skeleton)
    cut_to_plan(skeleton, family, plan, None, config.head_mode)
    drop = _layers_to_drop(config, stats)
    if drop:
        drop_decoder_layers(skeleton, family, drop)
    vision = trim_vision(skeleton, family) if config.trim_vision else []
    after = census(skeleton)
    sizes = lambda c: {k: {"params": v["params"], "bytes": v["bytes"]} for k, v in c["components"].items()}  # noqa: E731
    return {"plan": plan, "dropped_layers": drop, "vision_layers_removed": vision, "dtype": str(dtype).split(".")[-1],
            "before": sizes(before), "after": sizes(after),
            "calibration": stats.record if stats else None, "params": config.to_dict()}


def step_record(config: PruneConfig, stats: CalibrationStats | None, plan: dict, kept_mlp: list[dict],
                kept_attn: list[dict]) -> dict:
    """The manifest step of a prune, before depth surgery, config sync and parameter counts."""
    return {"kind": "prune", "method": _method(config), "params": config.to_dict(),
            "criterion": {"neurons": config.importance if config.glu else None,
                          "heads": config.head_importance if config.heads else None},
            "calibration": stats.record if stats else None,
            "plan": plan,
            "kept": {"mlp": kept_mlp, "attention": kept_attn}}


def _method(config: PruneConfig) -> str:
    parts = [name for name, on in (("glu", config.glu), ("heads", config.heads), ("layers", config.drop_layers),
                                   ("vision", config.trim_vision)) if on]
    return "+".join(parts) or "none"


def record_step(manifest: dict, model: nn.Module, step: dict) -> dict:
    """Append a prune step and the resulting architecture / loadability to a manifest."""
    manifest["steps"].append(step)
    manifest["architecture"] = architecture_of(model)
    manifest["stock_loadable"] = step["stock_loadable"]
    return manifest
