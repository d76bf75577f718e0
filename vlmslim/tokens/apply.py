"""Fewer image tokens into the language model: placeholders cut in the prompt, features cut after the
projector, for any checkpoint and both decoding engines.

Two edits that must agree, both for one image per sample:
- `reduce_placeholders`: each row's N image placeholder ids become K (the first K kept, the rest dropped),
  rows re-left-padded to a common length with their attention masks, so position ids — counted from
  the mask by `generate` and by the compiled engine — stay right in left-padded batches;
- `reducing(model, spec)`: a forward hook on the projector turns its (images, N, D) output into
  (images, K, D); for `visionzip`, a pre-hook on the vision layer that produces the features computes
  the CLS query's attention over the patches (heads averaged), independent of the attention kernel.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from vlmslim.errors import BenchmarkError
from vlmslim.families import FAMILIES, get_family
from vlmslim.tokens.reducers import REDUCERS, reduce


@dataclass(frozen=True)
class TokenSpec:
    """`--image-tokens K --token-method NAME`: K image tokens per image into the language model."""

    k: int
    method: str = "pool"
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"image_tokens (--image-tokens) must be an integer >= 1, got {self.k!r}")
        if self.method not in REDUCERS:
            raise ValueError(f"token_method (--token-method) must be one of {sorted(REDUCERS)}, got {self.method!r}")
        side = math.isqrt(self.k)
        if self.method == "pool" and side * side != self.k:
            raise ValueError(f"--token-method pool keeps a square grid: --image-tokens must be a perfect square "
                             f"(e.g. {side ** 2} or {(side + 1) ** 2}), got {self.k}; visionzip and random take any K")

    def to_dict(self) -> dict:
        return {"image_tokens": self.k, "method": self.method, "seed": self.seed}


def check_supported(model_or_config) -> None:
    family = get_family(model_or_config)
    if not family.token_reduction:
        wired = sorted(name for name, f in FAMILIES.items() if f.token_reduction)
        raise BenchmarkError(f"--image-tokens is wired for {', '.join(wired)} only, not {family.model_type} "
                             "(its image tokens are not one square grid per image)")


def reduce_placeholders(inputs: dict[str, torch.Tensor], image_token_id: int, n: int, k: int,
                        pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Input ids / attention mask with K of each row's N image placeholders (left padding kept)."""
    if k >= n:
        return inputs
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    rows, masks = [], []
    for row, m in zip(ids, mask):
        real = row[m.bool()]  # (T,) the row without its left padding
        is_img = real == image_token_id
        if int(is_img.sum()) != n:
            raise BenchmarkError(f"expected {n} image placeholder tokens per sample, found {int(is_img.sum())}")
        drop = is_img.nonzero().flatten()[k:]  # keep the first K placeholders
        keep = torch.ones_like(real, dtype=torch.bool)
        keep[drop] = False
        rows.append(real[keep])
    width = max(len(r) for r in rows)
    out_ids = torch.full((len(rows), width), pad_token_id, dtype=ids.dtype, device=ids.device)
    out_mask = torch.zeros((len(rows), width), dtype=mask.dtype, device=mask.device)
    for i, r in enumerate(rows):
        out_ids[i, width - len(r):] = r
        out_mask[i, width - len(r):] = 1
    return {**inputs, "input_ids": out_ids, "attention_mask": out_mask}


def _feature_layer(model) -> nn.Module:
    """The vision encoder layer whose output LLaVA projects (`vision_feature_layer`, -2 by default)."""
    family = get_family(model)
    layers = family.vision_layer_list(model)
    f = model.config.vision_feature_layer
    if not isinstance(f, int):
        raise BenchmarkError("--token-method visionzip needs a single vision_feature_layer")
    index = len(layers) + f if f < 0 else f - 1  # hidden_states[f] is the output of layer f - 1
    return layers[index]


def _cls_attention(attn: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """(B, N) attention of the CLS query over the N patch keys, heads averaged. hidden: (B, 1 + N, Dv)."""
    b, t, _ = hidden.shape
    h = attn.num_heads
    q = attn.q_proj(hidden[:, :1]).view(b, 1, h, -1).transpose(1, 2)  # (B, H, 1, hd)
    k = attn.k_proj(hidden).view(b, t, h, -1).transpose(1, 2)  # (B, H, T, hd)
    weights = ((q @ k.transpose(-1, -2)).float() * attn.scale).softmax(-1)  # (B, H, 1, T)
    return weights.mean(1)[:, 0, 1:]  # (B, N): patch keys only


@contextlib.contextmanager
def reducing(model, spec: TokenSpec | None):
    """Within the block the model's projector emits `spec.k` tokens per image (no-op for None)."""
    if spec is None:
        yield
        return
    check_supported(model)
    family = get_family(model)
    state: dict[str, torch.Tensor] = {}
    handles = []
    if REDUCERS[spec.method].needs_cls_attention:
        layer = _feature_layer(model)

        def capture(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            state["cls"] = _cls_attention(module, hidden)

        handles.append(layer.get_submodule(family.attn).register_forward_pre_hook(capture, with_kwargs=True))

    def cut(module, args, output):  # (images, N, D) -> (images, K, D)
        return reduce(spec.method, output, spec.k, cls_attention=state.pop("cls", None), seed=spec.seed)

    handles.append(model.get_submodule(family.projector[0]).register_forward_hook(cut))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
