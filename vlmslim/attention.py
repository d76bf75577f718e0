"""Split-K decode attention ("flash-decoding") for one query row per sequence over a static KV cache.

Why: at batch 1 a decode step's attention reads the whole static cache (B x Hkv x L x D keys and
values) for one query row per head, ~0.11 ms per token for the 7B shape's K and V at 3 TB/s; SDPA's kernels
took 0.40 ms (cuDNN, with its split reduction and the mask) and 0.93 ms (memory-efficient). Here every
(sequence, head) is split over the cache length into enough programs to fill the GPU; each writes a partial
(max, sum, weighted V), and a second kernel combines them. The launch configuration is tuned per shape on
first use (`_tune`, CUDA-graph timing).
Measured on one H100 (docs/performance.md): 8.9 vs 16.2 us per call with cuDNN at the LLaVA decode shape;
fp16 decode 6.14 -> 5.69 ms/token and int4wo 2.92 -> 2.86 in one process, so the compiled engine uses it by
default where it runs (CUDA with Triton).

Use: `enable(text_config)` registers "vlmslim_decode" with transformers' attention and mask interfaces and
sets it on the language model's config. Rows with more than one query (the prefill), masks that are not boolean, and
CPUs go to transformers' SDPA function unchanged, so only the decode step changes. `CompiledDecoder(...,
attention="split")` does this. Shapes: query (B, H, 1, D), key / value (B, Hkv, L, D) with H a multiple
of Hkv (grouped-query attention), mask (B, 1, 1, L) bool, True = attend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from vlmslim.gemv import copies_past_l2, fastest, tuned

try:  # the GPU image ships Triton with torch; the CPU wheel does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


NAME = "vlmslim_decode"
BLOCK_L = 64  # cache positions per inner step (a 64 x D tile of K and of V)


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


if triton is not None:

    @triton.jit
    def _split_attn_partial(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, scale, L, H, GROUP, SPLITS,
                            sqb, sqh, skb, skh, skl, svb, svh, svl, smb, sml,
                            HAS_MASK: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, D: tl.constexpr):
        """Program (b*H + h, s): positions [s*CHUNK, (s+1)*CHUNK) of head h of sequence b."""
        bh = tl.program_id(0)
        s = tl.program_id(1)
        b = bh // H
        h = bh % H
        kvh = h // GROUP
        rd = tl.arange(0, D)
        q = tl.load(q_ptr + b * sqb + h * sqh + rd).to(tl.float32) * scale  # (D,)
        m_i = -float("inf")
        l_i = 0.0
        acc = tl.zeros((D,), dtype=tl.float32)
        for j in tl.static_range(CHUNK // BLOCK):
            rl = s * CHUNK + j * BLOCK + tl.arange(0, BLOCK)
            ok = rl < L
            if HAS_MASK:
                ok = ok & (tl.load(mask_ptr + b * smb + rl * sml, mask=rl < L, other=0) != 0)
            # K and V tiles requested together, before any arithmetic: two reads in flight, not one after
            # the other (a program here is short; its memory latency is most of its time)
            k = tl.load(k_ptr + b * skb + kvh * skh + rl[:, None] * skl + rd[None, :], mask=ok[:, None], other=0.0)
            v = tl.load(v_ptr + b * svb + kvh * svh + rl[:, None] * svl + rd[None, :], mask=ok[:, None], other=0.0)
            sc = tl.sum(k.to(tl.float32) * q[None, :], axis=1)  # (BLOCK,) scaled scores
            sc = tl.where(ok, sc, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(sc, axis=0))
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # all masked so far: keep exp() finite
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(sc - m_safe)  # (BLOCK,), 0 where masked
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        row = bh * SPLITS + s
        tl.store(m_ptr + row, m_i)
        tl.store(l_ptr + row, l_i)
        tl.store(acc_ptr + row * D + rd, acc)

    @triton.jit
    def _split_attn_combine(m_ptr, l_ptr, acc_ptr, out_ptr, SPLITS, S_POW2: tl.constexpr, D: tl.constexpr):
        """out[bh] = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s, M = max_s m_s; stored in out's dtype."""
        bh = tl.program_id(0)
        rs = tl.arange(0, S_POW2)
        rd = tl.arange(0, D)
        ok = rs < SPLITS
        m = tl.load(m_ptr + bh * SPLITS + rs, mask=ok, other=-float("inf"))
        big = tl.max(m, axis=0)
        w = tl.where(m == -float("inf"), 0.0, tl.exp(m - big))  # a split with no position to attend adds 0
        l_sum = tl.sum(w * tl.load(l_ptr + bh * SPLITS + rs, mask=ok, other=0.0), axis=0)
        acc = tl.load(acc_ptr + (bh * SPLITS + rs)[:, None] * D + rd[None, :], mask=ok[:, None], other=0.0)
        out = tl.sum(w[:, None] * acc, axis=0) / l_sum
        tl.store(out_ptr + bh * D + rd, out.to(out_ptr.dtype.element_ty))


@dataclass(frozen=True)
class LaunchConfig:
    block: int  # cache positions per inner step (a block x D tile of K and of V)
    per_sm: int  # programs per SM to aim for (the split count follows)
    warps: int


# tried on first use per shape, fastest kept (`_tune`); the first is the untuned default (interpreter, tests).
# Picked on one H100 (7B shape): 64x4/SM w4 or 32x8/SM w2 (within 0.3 us) at the LLaVA decode's 656 positions,
# 128x4/SM w8 at 2048, 32x8/SM w2 at batch 8. A variant whose last program per head did the combine (one launch,
# counters in global memory) was measured too and never picked; it is not kept.
CONFIGS = tuple(LaunchConfig(*c) for c in (
    (64, 4, 4), (32, 8, 2), (16, 8, 2), (64, 8, 4), (128, 4, 8), (16, 16, 2), (32, 4, 4), (128, 2, 8),
))
_BEST: dict[tuple, LaunchConfig] = {}


def plan(batch_heads: int, length: int, programs: int, block: int = BLOCK_L) -> tuple[int, int]:
    """(chunk, splits): each (sequence, head) split into chunks of whole `block` steps so that about
    `programs` programs run (a few per SM)."""
    splits = max(1, min(math.ceil(length / block), math.ceil(programs / batch_heads)))
    chunk = block * math.ceil(math.ceil(length / splits) / block)
    return chunk, math.ceil(length / chunk)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
            programs: int, cfg: LaunchConfig) -> torch.Tensor:
    b, h, _, d = q.shape
    hkv, length = k.shape[1], k.shape[2]
    chunk, splits = plan(b * h, length, programs, cfg.block)
    m = torch.empty(b * h * splits, device=q.device, dtype=torch.float32)
    l_ = torch.empty_like(m)
    acc = torch.empty(b * h * splits, d, device=q.device, dtype=torch.float32)
    q2 = q[:, :, 0]  # (B, H, D)
    # The boolean mask is read in place, as bytes (a view, any strides: it is an expanded slice of the
    # layer-shared 4-D mask), not converted per layer: that was a kernel launch per layer.
    mask2 = None if mask is None else mask.view(torch.uint8)[:, 0, 0, :]  # (B, L)
    # (B, H, 1, D) contiguous has the memory layout of (B, 1, H, D): the caller's transpose copies nothing.
    # The combine stores in q's dtype (no separate cast kernel).
    out = torch.empty(b, h, 1, d, device=q.device, dtype=q.dtype)
    _split_attn_partial[(b * h, splits)](
        q2, k, v, mask2 if mask2 is not None else q2, m, l_, acc, scale, length, h, h // hkv, splits,
        q2.stride(0), q2.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        mask2.stride(0) if mask2 is not None else 0, mask2.stride(1) if mask2 is not None else 0,
        HAS_MASK=mask2 is not None, CHUNK=chunk, BLOCK=cfg.block, D=d, num_warps=cfg.warps)
    _split_attn_combine[(b * h,)](m, l_, acc, out, splits, S_POW2=triton.next_power_of_2(splits), D=d, num_warps=4)
    return out


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    d = q.shape[-1]
    if d & (d - 1) or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError(f"split decode attention needs a power-of-two head dim and contiguous rows, got {d}")


def _split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float, programs: int | None = None, cfg: LaunchConfig = CONFIGS[0]) -> torch.Tensor:
    """One launch with `cfg` (the tests pass `programs`: Triton's interpreter has no device to count SMs on)."""
    _check(q, k, v)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if programs is None:
        programs = cfg.per_sm * torch.cuda.get_device_properties(q.device).multi_processor_count
    return _launch(q, k, v, mask, scale, programs, cfg)


def _tune(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> LaunchConfig:
    """The fastest of CONFIGS for this shape: CUDA-graph replays over copies of the cache larger than L2 (as in
    a decode step, where every layer's cache is new), as vlmslim.gemv tunes its GEMVs."""
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    caches = copies_past_l2((k, v), q.device)
    best, _ = fastest(CONFIGS, lambda cfg: [lambda kv=kv: _launch(q, *kv, mask, scale, cfg.per_sm * sms, cfg)
                                            for kv in caches],
                      f"split attention q {tuple(q.shape)} k {tuple(k.shape)}")
    return best


def tuned_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    scale: float) -> torch.Tensor:
    """`_split_attention` with the launch config tuned for this shape on its first call (outside CUDA-graph
    capture: the compiled engine runs one eager step first)."""
    _check(q, k, v)
    key = (tuple(q.shape), tuple(k.shape), q.dtype, mask is None, q.device.index)
    cfg = tuned(_BEST, key, lambda: _tune(q, k, v, mask, scale), "split attention")
    return _split_attention(q, k, v, mask, scale, cfg=cfg)


# Opaque to torch.compile (as vlmslim.gemv's kernels): inductor calls it, CUDA graphs capture its launches.
@torch.library.custom_op("vlmslim::split_decode_attention", mutates_args=())
def split_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                           scale: float) -> torch.Tensor:
    if q.stride(-1) != 1:
        q = q.contiguous()
    return tuned_attention(q, k, v, mask, scale)


@split_decode_attention.register_fake
def _(q, k, v, mask, scale):
    return q.new_empty(q.shape)  # contiguous, as the real output


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The same attention in plain torch (fp32): the tests' yardstick."""
    rep = q.shape[1] // k.shape[1]
    kf, vf = k.float().repeat_interleave(rep, dim=1), v.float().repeat_interleave(rep, dim=1)
    scores = (q.float() @ kf.transpose(-1, -2)) * scale  # (B, H, 1, L)
    if mask is not None:
        scores = scores.masked_fill(~mask.bool(), float("-inf"))
    return (scores.softmax(-1) @ vf).to(q.dtype)


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature; returns ((B, Lq, H, D), None) as `sdpa_attention_forward`."""
    decode_row = (query.shape[2] == 1 and available(query.device) and not dropout and not kwargs.get("softcap")
                  and kwargs.get("position_bias") is None
                  and (attention_mask is None or attention_mask.dtype == torch.bool))
    if not decode_row:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    b, length = query.shape[0], key.shape[2]
    mask = None if attention_mask is None else attention_mask[:, :, -1:, :length].expand(b, 1, 1, length)
    out = torch.ops.vlmslim.split_decode_attention(query, key, value, mask, float(scale))
    return out.transpose(1, 2).contiguous(), None


def enable(text_config) -> None:
    """Decode through `decode_attention` wherever `text_config` (a language model's config) is used."""
    AttentionInterface.register(NAME, decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # boolean masks, as SDPA gets them
    text_config._attn_implementation = NAME
