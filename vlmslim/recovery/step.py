"""`vlmslim recover`: a pruned checkpoint in, a distilled checkpoint of the same shapes out.

Refuse what configs alone can refuse (families, vocabularies, a quantized student) before loading
weights; hash the recovery data by image content (refusing overlap with `--heldout` sets); load teacher
and student; take the teacher's answers (cached); distil; fold LoRA into the weights; then
`save_verified` (atomic save -> reload through `load_model` -> logits check), with `loss.jsonl` and
`loss.png` written into the checkpoint and the manifest step `recover` recording teacher, data, method,
hyper-parameters and final losses. A resume state lives in `<out>.resume/` until the output is saved.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from vlmslim.checkpoint import reference_logits, save_verified
from vlmslim.data import LocalDataset
from vlmslim.data import load as load_dataset
from vlmslim.data.hashes import TRAINED_ON, content_sha256, dataset_image_hashes, overlap
from vlmslim.errors import RecoveryError
from vlmslim.families import get_family
from vlmslim.io import holds_output
from vlmslim.loading import is_random, load_config, load_model, resolve_source
from vlmslim.manifest import new_manifest, read_manifest
from vlmslim.prompts import pinned_instruction
from vlmslim.recovery.batches import Encoder, step_indices
from vlmslim.recovery.config import RecoverConfig
from vlmslim.recovery.losses import aligned_layers
from vlmslim.recovery.methods import METHODS
from vlmslim.recovery.report import plot_losses, recovery_card, write_loss_log
from vlmslim.recovery.targets import cache_key, default_cache_dir, teacher_targets, model_sha256
from vlmslim.recovery.train import TrainResult, evaluate, train

logger = logging.getLogger(__name__)

MERGE_RTOL = 1e-4  # merged LoRA vs the adapter it came from: float rounding only
PROBE = 64  # first samples of the recovery data scored before and after (KD loss, teacher agreement)


def resume_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.resume")


def preflight(student: str, teacher: str) -> None:
    """Refuse from the configs alone: another family or vocabulary, a quantized student."""
    s_cfg, t_cfg = load_config(student), load_config(teacher)
    s_fam, t_fam = get_family(s_cfg), get_family(t_cfg)
    if s_fam.model_type != t_fam.model_type:
        raise RecoveryError(f"the student {student} is a {s_fam.model_type} model, the teacher {teacher} a "
                            f"{t_fam.model_type} model: distillation needs one family (and one tokenizer)")
    sv, tv = s_fam.get_text_config(s_cfg).vocab_size, t_fam.get_text_config(t_cfg).vocab_size
    if sv != tv:
        raise RecoveryError(f"the student's vocabulary has {sv} entries, the teacher's {tv}: token-level KD needs "
                            "the same vocabulary (recover toward the model the student was pruned from)")
    manifest = read_manifest(student) if Path(student).is_dir() else None
    if getattr(s_cfg, "quantization_config", None) is not None or (
            manifest and any(s.get("kind") == "quantize" for s in manifest.get("steps", []))):
        raise RecoveryError(f"{student} is a quantized checkpoint; recover the 16-bit checkpoint, then quantize it")
    for src in (student, teacher):
        if is_random(src):
            raise RecoveryError(f"{src} has random weights and no processor; recovery needs real checkpoints")


def recovery_data(path: str | os.PathLike, heldout: tuple[str, ...]) -> tuple[LocalDataset, list[str], dict]:
    """(dataset, image hashes, the manifest's `trained_on` record); RecoveryError on overlap with `heldout`."""
    dataset = load_dataset(path)  # DataError for a missing or empty set
    hashes = dataset_image_hashes(dataset)
    for other in heldout:
        held = load_dataset(other)
        shared = overlap(hashes, held)
        if shared:
            raise RecoveryError(f"{len(shared)} images of the held-out set {other} are in the recovery data {path} "
                                f"(same pixels), e.g. sample {shared[0]!r}: recover on a disjoint set (another "
                                "synthetic --seed, another split)")
    record = {"dir": str(Path(path).resolve()), "n_samples": len(dataset), "task": dataset.task,
              "content_sha256": content_sha256(hashes, [pinned_instruction(s) for s in dataset.samples]),
              "samples_sha256": dataset.meta.get("samples_sha256"), "heldout_checked": list(heldout),
              "image_hashes": sorted(set(hashes))}
    return dataset, hashes, record


def _same_tokenizer(s_proc, t_proc) -> None:
    if s_proc is None or t_proc is None:
        raise RecoveryError("student and teacher need a processor (tokenizer + image processor) for recovery")
    s_tok, t_tok = getattr(s_proc, "tokenizer", s_proc), getattr(t_proc, "tokenizer", t_proc)
    if s_tok.get_vocab() != t_tok.get_vocab():
        raise RecoveryError("the student's and the teacher's tokenizers differ: token-level KD needs one tokenizer")


def teacher_answers(t_model, t_proc, teacher: str, dataset: LocalDataset, data_record: dict,
                    config: RecoverConfig) -> tuple[list, str]:
    """(the teacher's answer to every sample, the teacher's weights hash), from the cache when it has them."""
    teacher_sha = model_sha256(teacher)
    key = cache_key(data_record["content_sha256"], teacher_sha, config.max_new_tokens, get_family(t_model).model_type)
    targets = teacher_targets(t_model, t_proc, dataset, key, cache_dir=Path(config.cache_dir or default_cache_dir()),
                              batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
                              progress=config.progress)
    return targets, teacher_sha


@holds_output
def recover_checkpoint(student: str | os.PathLike, teacher: str | os.PathLike, data: str | os.PathLike,
                       out: str | os.PathLike, config: RecoverConfig, overwrite: bool = False) -> tuple[Path, dict]:
    """Distil `student` toward `teacher` on `data` and save the result to `out`; returns (out, manifest)."""
    names = str(student), str(teacher)  # as the user named them ("demo"), for the record and the plot
    student, teacher = resolve_source(student), resolve_source(teacher)
    preflight(student, teacher)
    dataset, _, data_record = recovery_data(data, config.heldout)
    t_model, t_proc = load_model(teacher, dtype=config.dtype, device=config.device)
    s_model, s_proc = load_model(student, dtype=config.dtype, device=config.device)
    _same_tokenizer(s_proc, t_proc)
    s_manifest = read_manifest(student)
    targets, teacher_sha = teacher_answers(t_model, t_proc, teacher, dataset, data_record, config)
    encoder = Encoder(s_model, s_proc, dataset, [t.answer_ids for t in targets], config.max_length)
    pairs = _hidden_pairs(s_model, t_model, s_manifest, read_manifest(teacher)) if config.hidden_weight > 0 else None
    probe = [encoder.batch(list(range(i, min(i + config.batch_size, PROBE, len(dataset)))))
             for i in range(0, min(PROBE, len(dataset)), config.batch_size)]
    before = evaluate(s_model, t_model, probe, config.kd_temperature)
    fingerprint = {"config": config.fingerprint(), "student": model_sha256(student), "teacher": teacher_sha,
                   "data": data_record["content_sha256"]}
    result = train(s_model, t_model, lambda step: encoder.batch(step_indices(len(dataset), config.batch_size,
                                                                             config.seed, step)),
                   config, hidden_pairs=pairs, state_dir=resume_dir(out), fingerprint=fingerprint)
    model, merge_diff = finish(result.model, config.method, s_proc)
    after = evaluate(model, t_model, probe, config.kd_temperature)
    logger.info("probe (%d samples): KD %.4g -> %.4g, teacher agreement %.3f -> %.3f", min(PROBE, len(dataset)),
                before["kd"], after["kd"], before["agreement"], after["agreement"])
    del t_model
    record = _step_record(config, names[1], teacher, teacher_sha, data_record, targets, result, pairs, merge_diff, model)
    record["probe"] = {"n_samples": min(PROBE, len(dataset)), "before": before, "after": after}
    manifest = new_manifest(student, model.config, prior=s_manifest, seed=config.seed)
    manifest["steps"].append(record)
    short = [Path(n).name or n for n in names]
    title = f"{short[0]} <- teacher {short[1]}: {config.method}, {config.steps} steps of {config.batch_size}"
    saved = _save(model, s_proc, out, manifest, result.history, title, config, overwrite)
    shutil.rmtree(resume_dir(out), ignore_errors=True)
    logger.info("recovered %s -> %s", student, out)
    return Path(out), saved


def _hidden_pairs(s_model, t_model, s_manifest, t_manifest) -> list[tuple[int, int]]:
    pairs = aligned_layers(s_manifest, t_manifest, len(get_family(s_model).decoder_layers(s_model)),
                           len(get_family(t_model).decoder_layers(t_model)))
    logger.info("hidden-state loss on (student, teacher) layers %s", pairs)
    return pairs


def _save(model, processor, out, manifest: dict, history: list[dict], title: str, config: RecoverConfig,
          overwrite: bool) -> dict:
    """`save_verified` with the loss log and its plot written into the staging dir (so they appear with it)."""
    dtype = next(model.parameters()).dtype
    atol = 1e-5 if dtype == torch.float32 else 1e-2  # a plain save of plain weights: any bug shows as O(1)

    def add_logs(staging: Path, reloaded: nn.Module, logits: torch.Tensor, saved: dict) -> dict:
        write_loss_log(staging, history)
        plot_losses(staging, history, title)
        return {}

    return save_verified(model, processor, out, manifest, atol=atol, device=config.device, overwrite=overwrite,
                         check=add_logs, card=recovery_card)


def finish(model: nn.Module, method: str, processor=None) -> tuple[nn.Module, float | None]:
    """The plain model to save; for LoRA, the merged model and max |Δlogit| between merged and adapter."""
    m = METHODS[method]
    if m.finish is None:
        return model, None
    before = reference_logits(model, processor)
    plain = m.finish(model)
    diff = (reference_logits(plain, processor) - before).abs().max().item()
    tol = MERGE_RTOL * max(1.0, before.abs().max().item())
    if not diff <= tol:
        raise RecoveryError(f"merging the adapters changed the logits by {diff:.3g} (> {tol:.3g})")
    return plain, diff


def _step_record(config: RecoverConfig, name: str, teacher: str, teacher_sha: str, data_record: dict, targets, result: TrainResult,
                 pairs, merge_diff, model: nn.Module) -> dict:
    params = config.to_dict()
    for k in ("progress", "cache_dir", "device", "heldout"):
        params.pop(k)
    params["warmup"] = config.warmup_steps
    params["lora_alpha"] = config.alpha if config.method == "lora-kd" else None
    first = result.history[: min(10, len(result.history))]
    return {
        "kind": "recover", "method": config.method, "params": params,
        "teacher": {"source": name, "path": teacher, "model_sha256": teacher_sha},
        TRAINED_ON: data_record,
        "targets": {"source": "teacher greedy answer to the pinned instruction", "n": len(targets),
                    "mean_answer_tokens": sum(len(t.answer_ids) for t in targets) / len(targets),
                    "example": targets[0].answer},
        "initial_losses": {k: sum(r[k] for r in first) / len(first) for k in result.final()},
        "final_losses": result.final(),
        "hidden_layers": [list(p) for p in pairs] if pairs else None,
        "lora_merge_max_abs_diff": merge_diff,
        "trainable_params": result.trainable_params,
        "device": config.device, "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "seconds": round(result.seconds, 2), "tokens_per_s": result.tokens_per_s,
        "peak_memory_mb": result.peak_memory_mb, "resumed_from_step": result.resumed_from,
    }
