"""Batched greedy generation with honest timing.

One `generate` call per batch; the clock is read on the host after a device synchronisation:

- `t0`: before the processor runs (so latency and TTFT include image preprocessing; `preprocess_s` is
  recorded apart so it can be subtracted);
- first token: a `LogitsProcessor` is called by `generate` once per step, right after that step's
  forward pass. Its first call follows the prefill forward (vision tower + projector + full prompt),
  so a sync + timestamp there is the time to first token (the argmax of token 1 is the only thing not
  yet done — negligible). Later calls are only counted: a sync per step would serialise the host and
  the device and slow the decode we measure;
- end: after `generate` returns, synchronised.

decode ms/token = (end − first token) / (steps − 1): the time of one decoding step of the whole batch,
i.e. the inter-token latency each sequence sees (not divided by the batch size).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from vlmslim.benchmarks.devices import device_sync
from vlmslim.benchmarks.engine import CompiledDecoder
from vlmslim.errors import BenchmarkError
from vlmslim.families import first_param_device, get_family
from vlmslim.inputs import processor_inputs
from vlmslim.tokens import TokenSpec, reduce_placeholders, reducing

logger = logging.getLogger(__name__)

# Pinned decoding: greedy, and explicit neutral values so a model's generation_config.json
# (repetition_penalty, no_repeat_ngram_size, …) cannot silently change the protocol.
GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


@dataclass
class BatchOutput:
    predictions: list[str]
    tokens: list[int]  # generated tokens per sample, up to and including EOS
    latency_s: float  # end-to-end for the batch: preprocessing + generate + decode
    preprocess_s: float
    ttft_s: float | None  # t0 → first token; None if generate made no step
    decode_s: float | None  # first token → end; None with fewer than 2 steps
    steps: int  # generation steps (= longest answer in the batch)

    @property
    def decode_ms_per_token(self) -> float | None:
        if self.decode_s is None or self.steps < 2:
            return None
        return 1000 * self.decode_s / (self.steps - 1)


class FirstTokenTimer(LogitsProcessor):
    """Timestamps the first generation step (after a device sync) and counts the steps."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.first: float | None = None
        self.steps = 0

    def __call__(self, input_ids, scores):
        if self.steps == 0:
            self.sync()
            self.first = time.perf_counter()
        self.steps += 1
        return scores


def eos_token_ids(model, tokenizer) -> set[int]:
    fixed = get_family(model).stop_token_ids(model.config)
    if fixed is not None:
        return fixed
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def decode_new_tokens(tokenizer, sequences: torch.Tensor, input_len: int, eos_ids: set[int]):
    """(texts, token counts) from `generate` output (B, input_len + new): only the tokens after the prompt.

    A row is cut after its first EOS; the padding `generate` appends to rows that finished early is
    neither decoded nor counted.
    """
    new = sequences[:, input_len:].tolist()  # (B, new): decoder-only generate returns prompt + answer
    texts, counts = [], []
    for row in new:
        n = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        counts.append(n)
        texts.append(tokenizer.decode(row[:n], skip_special_tokens=True).strip())
    return texts, counts


def build_inputs(model, processor, images, instructions: list[str], tokens: TokenSpec | None = None
                 ) -> dict[str, torch.Tensor]:
    """Processor inputs (chat template of the model's family, left padding) on the model's input device;
    with `tokens`, K image placeholders per image (the model must run inside `vlmslim.tokens.reducing`)."""
    inputs = processor_inputs(model, processor, images, instructions)
    if tokens is not None:
        tokenizer = getattr(processor, "tokenizer", processor)
        inputs = reduce_placeholders(inputs, model.config.image_token_id, get_family(model).image_tokens(model.config),
                                     tokens.k, tokenizer.pad_token_id or 0)
    device = first_param_device(model)  # with device_map="auto" the embeddings' device
    dtype = model.dtype
    # (B, C, H, W) pixels in the model's compute dtype; ids and masks stay integer.
    return {k: v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}


@torch.inference_mode()
def generate_batch(model, processor, images, instructions: list[str], max_new_tokens: int,
                   sync: Callable[[], None] | None = None, tokens: TokenSpec | None = None) -> BatchOutput:
    sync = sync or device_sync(model)
    tokenizer = getattr(processor, "tokenizer", processor)
    family = get_family(model)
    sync()
    t0 = time.perf_counter()
    inputs = build_inputs(model, processor, images, instructions, tokens)
    sync()
    t_pre = time.perf_counter()
    timer = FirstTokenTimer(sync)
    with reducing(model, tokens):
        out = model.generate(**inputs, **GREEDY, max_new_tokens=max_new_tokens,
                             logits_processor=LogitsProcessorList([timer]),
                             **family.generate_kwargs(tokenizer.pad_token_id))
    sync()
    t_end = time.perf_counter()
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    prompt = family.echoed_prompt(inputs["input_ids"], model.config)  # what generate returns first
    input_len = prompt.shape[1]
    if not torch.equal(sequences[:, :input_len].cpu(), prompt.cpu()):
        # Slicing at input_len is only right if generate echoes the prompt (decoder-only models do);
        # anything else would leak prompt tokens into answers or cut real ones.
        raise BenchmarkError(f"{type(model).__name__}.generate did not return the prompt ids first; "
                             "cannot separate generated tokens from the prompt")
    texts, counts = decode_new_tokens(tokenizer, sequences, input_len, eos_token_ids(model, tokenizer))
    t_dec = time.perf_counter()
    return BatchOutput(
        predictions=texts,
        tokens=counts,
        latency_s=t_dec - t0,
        preprocess_s=t_pre - t0,
        ttft_s=None if timer.first is None else timer.first - t0,
        decode_s=None if timer.first is None or timer.steps < 2 else t_end - timer.first,
        steps=timer.steps,
    )


def prompt_text(model, processor, instruction: str) -> str:
    """The full text the model sees for one sample (chat template applied), for the record."""
    return get_family(model).build_prompt(processor, instruction)


@torch.inference_mode()
def generate_batch_compiled(model, processor, images, instructions: list[str], max_new_tokens: int,
                            sync: Callable[[], None] | None = None, decoders: dict | None = None,
                            tokens: TokenSpec | None = None, fuse: bool = True,
                            attention: str = "split") -> BatchOutput:
    """As `generate_batch`, through `engine.CompiledDecoder` (static cache + CUDA-graph decode step; `fuse`:
    q|k|v and gate|up fused in the model; `attention`: the decode step's, split or sdpa).

    One decoder per batch size is kept in `decoders` (its graph is recorded on first use, which the
    benchmark's warm-up absorbs); the cache holds 256-position buckets so prompts of similar length share it.
    """
    sync = sync or device_sync(model)
    tokenizer = getattr(processor, "tokenizer", processor)
    decoders = {} if decoders is None else decoders
    sync()
    t0 = time.perf_counter()
    inputs = build_inputs(model, processor, images, instructions, tokens)
    sync()
    t_pre = time.perf_counter()
    b, length = inputs["input_ids"].shape
    need = -(-(length + max_new_tokens) // 256) * 256
    dec = decoders.get(b)
    if dec is None or dec.max_cache_len < need:
        dec = decoders[b] = CompiledDecoder(model, b, need, fuse=fuse, attention=attention)
    eos = sorted(eos_token_ids(model, tokenizer))
    with reducing(model, tokens):  # the prefill runs the vision tower + projector
        result = dec.decode(inputs, max_new_tokens, eos_token_id=eos[0] if eos else None,
                            pad_token_id=tokenizer.pad_token_id or 0)
    sync()
    # decode_new_tokens expects prompt + answer rows; the decoder returns only the answer.
    texts, counts = decode_new_tokens(tokenizer, result.tokens, 0, set(eos))
    t_dec = time.perf_counter()
    steps = result.decode_steps + 1
    return BatchOutput(predictions=texts, tokens=counts, latency_s=t_dec - t0, preprocess_s=t_pre - t0,
                       ttft_s=t_pre - t0 + result.prefill_s, decode_s=result.decode_s if steps >= 2 else None,
                       steps=steps)
