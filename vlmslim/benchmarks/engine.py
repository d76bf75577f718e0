"""Greedy decoding engines: `eager` (plain `generate`) and `compiled` (static KV cache + CUDA graphs).

Plain `generate` on a 7B LLaVA spends most of each decode step in Python and kernel launches (27.9 ms
per token on an H100 against a 4.7 ms bandwidth floor), so a 30%-smaller MLP barely moves latency.
The compiled engine runs the prefill (vision tower + projector + language model) eagerly into a
`StaticCache`, then decodes with the *language model step only* under `torch.compile(mode=
"reduce-overhead")`: fixed shapes and a fixed cache address let CUDA graphs replay the whole step.
Compiling the whole LLaVA forward instead crashed (a CUDA-graph output overwritten by the next replay):
here each step's output token is cloned out of the graph before the next replay.

The compiled engine also fuses q|k|v and gate|up into one product each (`vlmslim.fusion`, `fuse=True`,
`--no-fuse` in bench): in the model, in place, with equal logits. Measured on one H100 (7B shape, fp16,
same process): 6.72 -> 6.29 ms/token, 68 % -> 73 % of the bandwidth floor (docs/performance.md). On a CUDA
device with Triton its decode attention is vlmslim.attention's split-K kernels (`attention="split"`, the
default; `--attention sdpa` in bench keeps transformers' SDPA): 6.14 -> 5.69 ms/token fp16 (74 % -> 80 % of
the floor), int4wo 2.92 -> 2.86, same process.

Both engines return the same greedy tokens (checked against `generate` in tests and on the GPU).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from transformers import StaticCache

from vlmslim.benchmarks.devices import sync
from vlmslim import attention as split_attention
from vlmslim.families import FAMILIES, get_family
from vlmslim.fusion import fuse_projections, fused_groups
from vlmslim.gemv import TUNED
from vlmslim.int4 import decode_kernels

logger = logging.getLogger(__name__)

ENGINES = ("eager", "compiled")
# decode-step attention: vlmslim.attention's split-K kernels (the default where they run: CUDA with Triton;
# measured faster than cuDNN's SDPA on an H100, docs/performance.md), or transformers' SDPA
ATTENTIONS = ("split", "sdpa")


def decode_attention(attention: str, device: torch.device | str) -> str:
    """What the compiled decode step's attention will be on `device`: "split" needs CUDA and Triton."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    return "split" if attention == "split" and split_attention.available(torch.device(device)) else "sdpa"


def dynamo_counts() -> dict[str, int]:
    """Process-wide torch.compile counters (`torch._dynamo.utils.counters`); `CompiledDecoder.compile_stats`
    is their change over one decoder. A step that is one graph replayed by one CUDA graph has graphs 1, graph
    breaks 0 and cudagraph skips 0; a skipped CUDA graph runs inductor's kernels one launch at a time, which a
    fast (int4) step cannot hide. `cudagraph_copied_inputs` sums the non-static inputs (copied into the graph's
    buffers on every replay: token, positions, mask) over every graph the tree recorded, so it grows with each
    re-recording (an H100 run that re-recorded inside timed decodes counted 12 where a clean one counts 6)."""
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"],
            "cudagraph_copied_inputs": counters["inductor"]["cudagraph_recorded_non_static_inputs"]}


def kernels_record(model) -> dict:
    """What decoded, for bench's rows and sessions: which GEMV ran the int4 layers at batch 1 (the fused ones once
    the compiled engine fused them; None without int4 layers) and the launch config every self-tuning kernel chose
    in this process, with its device time (`vlmslim.gemv.TUNED`; None where nothing was tuned, e.g. on a CPU)."""
    return {"int4_decode_kernels": decode_kernels(model) or None, "tuned_kernels": dict(TUNED) or None}


@dataclass
class DecodeResult:
    tokens: torch.Tensor  # (B, new_tokens) generated ids, pad after EOS
    prefill_s: float  # prefill wall time (device-synchronised)
    decode_s: float  # all decode steps after the first token
    decode_steps: int  # number of decode steps run (tokens after the first)


class CompiledDecoder:
    """Reusable compiled decoder for one (batch size, max length); `decode(inputs, n)` runs greedy.

    Build it once per shape: the first call compiles and records the graph (warm it up before timing).
    """

    def __init__(self, model, batch_size: int, max_cache_len: int, compile: bool = True, backend: str = "inductor",
                 fuse: bool = True, attention: str = "split"):
        self.device = next(model.parameters()).device
        self.attention = decode_attention(attention, self.device)  # recorded by bench: what runs
        if self.attention != attention:
            logger.info("compiled decode attention: SDPA (split-K needs a CUDA device and Triton)")
        family = get_family(model)
        if not family.compiled_decode:
            supported = sorted(name for name, f in FAMILIES.items() if f.compiled_decode)
            raise ValueError(f"--engine compiled supports {', '.join(supported)}; "
                             f"use --engine eager for {family.model_type}")
        if fuse:
            try:
                fuse_projections(model)  # checks every layer before changing any
            except ValueError as e:  # a speed-up only: decode unfused, and say so (recorded by bench)
                logger.info("compiled decode without fused projections: %s", e)
        self.fused = fused_groups(model) > 0  # q|k|v and gate|up run as one product each
        self.model = model
        self.lm = family.language_model(model)
        self.head = model.get_submodule(family.lm_head)
        self.text_config = family.get_text_config(model.config)
        if self.attention == "split":  # on the language model's config, for good: prefill rows still go to SDPA
            split_attention.enable(self.text_config)
        self.batch_size, self.max_cache_len = batch_size, max_cache_len
        step = self._step
        if compile and backend == "cudagraphs":
            # Dynamo trace + CUDA-graph replay of the eager kernels: no codegen, compiles in seconds.
            step = torch.compile(step, backend="cudagraphs", fullgraph=False, dynamic=False)
        elif compile:
            # reduce-overhead = inductor kernels + CUDA graphs on GPU; on CPU plain inductor code.
            step = torch.compile(step, mode="reduce-overhead" if self.device.type == "cuda" else "default",
                                 fullgraph=False, dynamic=False)
        self.step = step
        # The first decode runs one step eagerly before the compiled one: kernels that tune themselves on
        # first use (vlmslim.gemv) do so outside CUDA-graph capture. Same token, same position: it writes
        # the cache entry the compiled step then writes again.
        self._warm = not (compile and self.device.type == "cuda")
        self._counts_at_start = dynamo_counts()
        self._cache: StaticCache | None = None  # one for every decode (`_reset_cache`)

    def _reset_cache(self) -> StaticCache:
        """The decoder's one StaticCache, emptied in place. Its K/V tensors are static inputs of the recorded CUDA
        graph: a new cache per decode lands wherever the allocator puts it, and at a new address the graph tree
        records the step again inside the timed decode. On an H100 (7B int4wo, docs/performance.md) code with a
        new cache per decode and a different allocator state decoded 3.14-3.18 ms/token instead of 2.61, with 4
        more graph recordings."""
        if self._cache is None:
            self._cache = StaticCache(config=self.text_config, max_cache_len=self.max_cache_len)
        else:
            self._cache.reset()  # zeroes keys, values and lengths in place
        return self._cache

    @property
    def compile_stats(self) -> dict[str, int]:
        """What compiling this decoder's step has produced so far (`dynamo_counts` since it was built): read it
        after a decode; bench records it with the compiled row."""
        now = dynamo_counts()
        return {k: now[k] - self._counts_at_start[k] for k in now}

    def _step(self, tok: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        # tok (B, 1), position_ids (B, 1), mask (B, max_cache_len) -> next token (B,)
        hidden = self.lm(input_ids=tok, position_ids=position_ids, attention_mask=mask,
                         past_key_values=cache, use_cache=True).last_hidden_state
        return self.head(hidden[:, -1]).argmax(-1)

    @torch.no_grad()
    def decode(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, eos_token_id: int | None = None,
               pad_token_id: int = 0, ignore_eos: bool = False) -> DecodeResult:
        ids = inputs["input_ids"]
        b, length = ids.shape
        if b != self.batch_size or length + max_new_tokens > self.max_cache_len:
            raise ValueError(f"decoder built for batch {self.batch_size} and {self.max_cache_len} positions, "
                             f"got batch {b} with {length}+{max_new_tokens}")
        attn = inputs.get("attention_mask", torch.ones_like(ids))
        # Left padding: a row's positions count its real tokens only (as `generate` does).
        position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)
        mask = torch.zeros(b, self.max_cache_len, dtype=attn.dtype, device=ids.device)
        mask[:, :length] = attn
        cache = self._reset_cache()
        sync(self.device)
        t0 = time.perf_counter()
        out = self.model(**inputs, position_ids=position_ids, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1].argmax(-1)
        sync(self.device)
        t1 = time.perf_counter()
        tokens = [tok]
        done = torch.zeros(b, dtype=torch.bool, device=ids.device)
        pos = position_ids[:, -1:]
        steps = 0
        for i in range(max_new_tokens - 1):
            if not ignore_eos and eos_token_id is not None:
                done |= tok == eos_token_id
                if bool(done.all()):
                    break
            mask[:, length + i] = 1
            pos = pos + 1
            if not self._warm:
                self._step(tok[:, None], pos, mask, cache)
                self._warm = True
            # clone(): the CUDA-graph output buffer is overwritten by the next replay.
            tok = self.step(tok[:, None], pos, mask, cache).clone()
            if not ignore_eos and eos_token_id is not None:
                tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
            tokens.append(tok)
            steps += 1
        sync(self.device)
        t2 = time.perf_counter()
        return DecodeResult(torch.stack(tokens, dim=1), t1 - t0, t2 - t1, steps)
