"""Calibration: run real images + prompts through the model and keep per-layer activation statistics.

Inputs are built exactly as at inference: the family's prompt (chat template where it has one) through the
model's own processor, followed by the sample's first reference answer, so the statistics cover image,
prompt and answer tokens. One sample per forward (no padding tokens in the statistics). Hooks reduce each
activation to a few vectors per layer on the model's device and add them to float64 accumulators on the
CPU; nothing bigger than one layer's activations is ever held.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from vlmslim.data import LocalDataset
from vlmslim.data import load as load_dataset
from vlmslim.errors import DataError, PruningError
from vlmslim.families import Family, first_param_device
from vlmslim.io import sha256_file
from vlmslim.prompts import pinned_instruction
from vlmslim.shapes import head_dim
from vlmslim.pruning.config import DEFAULT_CALIBRATION_SAMPLES
from vlmslim.pruning.importance import AttentionSaliency, GLUSaliency, HeadStats, NeuronStats

logger = logging.getLogger(__name__)


def load_calibration(path: str | Path) -> LocalDataset:
    """The calibration set at `path` (a `vlmslim data` directory)."""
    if not Path(path).is_dir():
        raise DataError(f"calibration data directory {path} does not exist")
    return load_dataset(path)  # vlmslim.data.load: validates the layout and its sha256


def calibration_count(requested: int | None, dataset) -> int:
    """How many calibration samples to run: an explicit count larger than the set is refused (the user
    asked for statistics over N samples); the default count takes the whole set when it is smaller, with
    a warning. Both numbers are recorded in the manifest (`requested`, `n_samples`)."""
    available = len(dataset)
    where = getattr(dataset, "root", "the calibration set")
    if requested is None:
        return min(DEFAULT_CALIBRATION_SAMPLES, available)
    if requested > available:
        raise PruningError(f"--calibration-samples {requested}: {where} has {available} samples; pass "
                           f"--calibration-samples {available} or fewer, or a larger calibration set")
    return requested


def pick_samples(dataset, n: int, seed: int) -> list:
    # The data step's seeded subset: the same (n, seed) picks the same samples everywhere.
    return dataset.select(n, seed).samples


def calibration_record(dataset, samples: list, requested: int | None = None) -> dict:
    """What identifies the calibration set in the manifest: directory, content hash, the chosen ids, and
    how many samples were asked for (None: the default) and used."""
    root = getattr(dataset, "root", None)
    rows = Path(root) / "samples.jsonl" if root is not None else None
    ids = "\n".join(s.id for s in samples).encode()
    return {
        "dir": str(root) if root is not None else None,
        "requested": DEFAULT_CALIBRATION_SAMPLES if requested is None else requested,
        "n_samples": len(samples),
        "samples_sha256": sha256_file(rows) if rows is not None and rows.exists() else None,
        "sample_ids_sha256": hashlib.sha256(ids).hexdigest(),
    }


def sample_text(family: Family, processor, sample) -> str:
    # The benchmark's pinned instruction, so calibration sees the prompts the model is judged on.
    instruction = pinned_instruction(sample)
    answer = sample.references[0] if sample.references else ""
    return (family.build_prompt(processor, instruction) + " " + answer).rstrip()


def calibration_inputs(model: nn.Module, family: Family, processor, dataset, samples: list):
    """One processor batch (a single sample) at a time, on the model's device."""
    device = first_param_device(model)
    for sample in samples:
        text = sample_text(family, processor, sample)
        inputs = processor(images=[dataset.open_image(sample)], text=[text], return_tensors="pt")
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


# ---------------------------------------------------------------- statistics


@dataclass
class CalibrationStats:
    neurons: dict[int, NeuronStats]  # decoder layer index -> stats of its down_proj input
    heads: dict[int, HeadStats]  # decoder layer index -> stats of its o_proj input, per head
    layer_similarity: torch.Tensor | None  # (L,): mean cos(input, output) of each decoder layer
    n_tokens: int
    record: dict  # calibration set identity, for the manifest
    teacher: list = field(default_factory=list)  # TeacherBatch per sample, when Taylor / sensitivity need them


def _first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@torch.no_grad()
def collect_stats(model: nn.Module, family: Family, processor, dataset, n_samples: int | None, seed: int,
                  neurons: bool, heads: bool, layers: bool) -> CalibrationStats:
    """`n_samples` None: the default count (`calibration_count`)."""
    if processor is None:
        raise PruningError("calibration runs the model's processor on images, and this model has none "
                           "(e.g. Qwen2.5-VL without torchvision); use a weight criterion")
    n = calibration_count(n_samples, dataset)
    if n_samples is None and n < DEFAULT_CALIBRATION_SAMPLES:
        logger.warning("%s has %d samples: uses all %d calibration samples (fewer than the default %d; "
                       "--calibration-samples sets the count)", getattr(dataset, "root", "the calibration set"),
                       len(dataset), n, DEFAULT_CALIBRATION_SAMPLES)
    samples = pick_samples(dataset, n, seed)
    decoder = family.decoder_layers(model)
    n_layers = len(decoder)
    acc: dict[str, torch.Tensor] = {}  # float64 accumulators on the CPU
    tokens = [0]

    def add(key: str, value: torch.Tensor) -> None:
        value = value.detach().to("cpu", torch.float64)
        acc[key] = acc[key] + value if key in acc else value

    def mlp_hook(i):
        def hook(module, args):
            h = args[0].detach().float().flatten(0, -2)  # (tokens, I): act(gate(x)) * up(x)
            add(f"abs{i}", h.abs().sum(0))
            add(f"sq{i}", h.pow(2).sum(0))
        return hook

    def head_hook(i, hd):
        def hook(module, args):
            x = args[0].detach().float().flatten(0, -2)  # (tokens, H * hd): heads side by side
            add(f"head{i}", x.view(x.shape[0], -1, hd).norm(dim=-1).sum(0))  # (H,)
            add(f"osq{i}", x.pow(2).sum(0))  # (H * hd,): per input column, for OWL's Wanda scores
        return hook

    def layer_hook(i):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]  # (B, T, hidden) residual stream in
            y = _first_tensor(output)  # (B, T, hidden) residual stream out
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            add(f"cos{i}", cos.sum().reshape(1))
            if i == 0:
                tokens[0] += cos.numel()
        return hook

    text_cfg = family.get_text_config(model.config)
    handles = []
    for i, layer in enumerate(decoder):
        if neurons:
            down = layer.get_submodule(family.mlp).get_submodule(family.down_proj)
            handles.append(down.register_forward_pre_hook(mlp_hook(i)))
        if heads:
            attn = layer.get_submodule(family.attn)
            hd = head_dim(attn, text_cfg)
            handles.append(attn.get_submodule(family.o_proj).register_forward_pre_hook(head_hook(i, hd)))
        # the token count comes from layer 0's hook, so it is always registered
        if layers or i == 0:
            handles.append(layer.register_forward_hook(layer_hook(i), with_kwargs=True))
    model.eval()
    # One forward per sample: on a CPU a 7B model takes seconds each, so say what is running and show a bar
    # (also when stderr is not a terminal; -q hides it).
    logger.info("calibration: %d samples through the %s model, one forward each", len(samples), family.model_type)
    started = time.perf_counter()
    try:
        for inputs in tqdm(calibration_inputs(model, family, processor, dataset, samples), total=len(samples),
                           desc="calibration", unit="sample", disable=not logger.isEnabledFor(logging.INFO)):
            model(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    n = max(tokens[0], 1)
    neuron_stats = {i: NeuronStats(abs_mean=(acc[f"abs{i}"] / n).float(), l2=acc[f"sq{i}"].sqrt().float())
                    for i in range(n_layers) if neurons}
    head_stats = {i: HeadStats(out_norm=(acc[f"head{i}"] / n).float(), in_l2=acc[f"osq{i}"].sqrt().float())
                  for i in range(n_layers) if heads}
    similarity = torch.cat([acc[f"cos{i}"] for i in range(n_layers)]).float() / n if layers else None
    logger.info("calibration: %d samples, %d tokens in %.1f s", len(samples), tokens[0], time.perf_counter() - started)
    return CalibrationStats(neuron_stats, head_stats, similarity, tokens[0],
                            calibration_record(dataset, samples, n_samples))


# ---------------------------------------------------------------- the teacher's own answers (Taylor, sensitivity)


@dataclass
class TeacherBatch:
    """One calibration sample with the unpruned model's greedy answer appended: the loss target of
    Taylor scores and of the sensitivity allocation (the recovery step distils toward the same answers)."""

    inputs: dict  # processor outputs with the answer appended: input_ids (1, T), attention_mask (1, T), pixels
    labels: torch.Tensor  # (1, T): -100 on image + prompt tokens, the answer's token ids after them
    answer_tokens: int


def _append_answer(inputs: dict, answer: torch.Tensor) -> dict:
    """Extend every per-token tensor of a batch-1 processor output by the answer tokens (1, A)."""
    n = inputs["input_ids"].shape[1]
    out = {}
    for k, v in inputs.items():
        if k == "labels":  # PaliGemma's processor adds labels; ours replace them
            continue
        if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == (1, n):
            # input_ids get the answer; masks and token types mark it as real, suffix text (PaliGemma: 1)
            tail = answer if k == "input_ids" else torch.ones_like(answer, dtype=v.dtype)
            v = torch.cat([v, tail.to(v.device, v.dtype)], dim=1)
        out[k] = v
    return out


_PLACEHOLDER_KEYS = ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id",
                     "vision_end_token_id")


def placeholder_token_ids(config) -> list[int]:
    """Token ids the model reserves for image placeholders: a teacher answer must not contain them (a random
    or weak model can emit one, and the appended answer then fails the image-token count check)."""
    return sorted({v for k in _PLACEHOLDER_KEYS if isinstance(v := getattr(config, k, None), int)})


@torch.no_grad()
def teacher_answers(model: nn.Module, family: Family, processor, dataset, samples: list,
                    max_new_tokens: int = 32) -> list[TeacherBatch]:
    """The model's greedy answer to each sample's pinned instruction (family prompt, own processor; image
    placeholder tokens suppressed), as a batch whose labels are exactly the answer tokens (including the
    end-of-sequence token when emitted)."""
    device = first_param_device(model)
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = getattr(family.get_text_config(model.config), "pad_token_id", None)
    model.eval()
    batches = []
    for sample in tqdm(samples, desc="teacher answers", unit="sample", disable=None):
        prompt = family.build_prompt(processor, pinned_instruction(sample))
        inputs = processor(images=[dataset.open_image(sample)], text=[prompt], return_tensors="pt")
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items() if k != "labels"}
        n = inputs["input_ids"].shape[1]
        out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, suppress_tokens=placeholder_token_ids(model.config) or None)
        answer = out[:, n:]  # (1, A): batch 1, so no padding; A >= 1
        full = _append_answer(inputs, answer)
        labels = torch.full_like(full["input_ids"], -100)
        labels[:, n:] = answer
        batches.append(TeacherBatch(full, labels, answer.shape[1]))
    logger.info("teacher answers: %d samples, %.1f tokens on average", len(batches),
                sum(b.answer_tokens for b in batches) / max(len(batches), 1))
    return batches


def teacher_record(batches: list[TeacherBatch], max_new_tokens: int) -> dict:
    return {"max_new_tokens": max_new_tokens, "greedy": True,
            "mean_answer_tokens": round(sum(b.answer_tokens for b in batches) / max(len(batches), 1), 2)}


def answer_loss(model: nn.Module, batch: TeacherBatch) -> torch.Tensor:
    """Mean next-token cross-entropy over the teacher's answer tokens (transformers shifts the labels)."""
    return model(**batch.inputs, labels=batch.labels, use_cache=False).loss


@torch.no_grad()
def mean_answer_loss(model: nn.Module, batches: list[TeacherBatch]) -> float:
    """Mean over samples of `answer_loss` (each sample weighs the same, whatever its answer length)."""
    return sum(float(answer_loss(model, b)) for b in batches) / len(batches)


def collect_taylor(model: nn.Module, family: Family, batches: list[TeacherBatch], neurons: bool,
                   heads: bool) -> tuple[dict[int, GLUSaliency], dict[int, AttentionSaliency]]:
    """Sum over samples b of |w * dL_b/dw| for the decoder's GLU (gate, up, down) and attention (q, k, v, o)
    weights, reduced per row (or per column for down / o) as each gradient arrives.

    Memory: only these weights require grad, each gradient is reduced to a vector and freed in its
    post-accumulate hook, so the peak is the model + one sample's activations + one weight's gradient.
    """
    decoder = family.decoder_layers(model)
    acc: dict[tuple[int, str], torch.Tensor] = {}
    targets = []  # (layer, name, weight, axis kept): axis 0 = per output row, 1 = per input column
    for i, layer in enumerate(decoder):
        if neurons:
            mlp = layer.get_submodule(family.mlp)
            targets += [(i, "gate", mlp.get_submodule(family.gate_proj).weight, 0),
                        (i, "up", mlp.get_submodule(family.up_proj).weight, 0),
                        (i, "down", mlp.get_submodule(family.down_proj).weight, 1)]
        if heads:
            attn = layer.get_submodule(family.attn)
            targets += [(i, "q", attn.get_submodule(family.q_proj).weight, 0),
                        (i, "k", attn.get_submodule(family.k_proj).weight, 0),
                        (i, "v", attn.get_submodule(family.v_proj).weight, 0),
                        (i, "o", attn.get_submodule(family.o_proj).weight, 1)]

    def reducer(key, axis):
        def hook(param):
            saliency = (param.detach().float() * param.grad.float()).abs().sum(1 - axis)
            saliency = saliency.to("cpu", torch.float64)
            acc[key] = acc[key] + saliency if key in acc else saliency
            param.grad = None
        return hook

    flags = {id(p): p.requires_grad for p in model.parameters()}
    handles = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for i, name, weight, axis in targets:
            weight.requires_grad_(True)
            handles.append(weight.register_post_accumulate_grad_hook(reducer((i, name), axis)))
        model.eval()
        with torch.enable_grad():
            for batch in tqdm(batches, desc="taylor scores", unit="sample", disable=None):
                answer_loss(model, batch).backward()
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(flags[id(p)])
    get = lambda i, name: acc[(i, name)].float()  # noqa: E731
    glu = {i: GLUSaliency(get(i, "gate"), get(i, "up"), get(i, "down")) for i in range(len(decoder)) if neurons}
    attn = {i: AttentionSaliency(get(i, "q"), get(i, "k"), get(i, "v"), get(i, "o"))
            for i in range(len(decoder)) if heads}
    return glu, attn


@torch.no_grad()
def masked_loss(model: nn.Module, family: Family, batches: list[TeacherBatch], layer: int, component: str,
                mask: torch.Tensor) -> float:
    """`mean_answer_loss` with units of one layer switched off: `mask` (I,) over the down_proj input
    (component "glu") or (H * hd,) over the o_proj input ("heads"). Zeroing a neuron's down input or a
    head's o input is exactly removing it (a KV group whose query heads are all off is removed too)."""
    block = family.decoder_layers(model)[layer]
    if component == "glu":
        target = block.get_submodule(family.mlp).get_submodule(family.down_proj)
    else:
        target = block.get_submodule(family.attn).get_submodule(family.o_proj)
    handle = target.register_forward_pre_hook(lambda module, args: (args[0] * mask.to(args[0]),))
    try:
        return mean_answer_loss(model, batches)
    finally:
        handle.remove()
