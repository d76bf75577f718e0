"""Model inputs without a dataset: a fixed image + prompt through the processor, or, when there is no
processor (architecture-only runs, Qwen without torchvision), token ids and pixels built from the config
with the family's real image-token count.

Used by `verify_reload` (the same fixed input before save and after reload) and by random-weight
efficiency runs.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vlmslim.prompts import CAPTION_PROMPT
from vlmslim.families import QWEN_SYNTHETIC_SIDE, get_family

FIXED_PROMPT = CAPTION_PROMPT  # the pinned caption instruction (DESIGN.md protocol)


def fixed_image(size: int = 64, seed: int = 0) -> Image.Image:
    """A deterministic RGB noise image (noise, not zeros: zeros hide indexing bugs)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def processor_inputs(model, processor, images, prompts: list[str]) -> dict[str, torch.Tensor]:
    family = get_family(model)
    texts = [family.build_prompt(processor, p) for p in prompts]
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    return dict(processor(images=images, text=texts, return_tensors="pt", padding=True))


def synthetic_inputs(model, batch_size: int = 1, prompt_len: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids and pixel values from the config alone: one image per sample, `prompt_len` text tokens,
    laid out as the family's forward expects them (`Family.image_tokens`, `pixel_layout`, ...)."""
    config = model.config
    family = get_family(model)
    text_cfg = family.get_text_config(config)
    vc = config.vision_config
    g = torch.Generator().manual_seed(seed)
    n_img = family.image_tokens(config)
    image_token = getattr(config, "image_token_id", None)
    if image_token is None and family.image_in_text:
        image_token = config.image_token_index
    # Text tokens from the low end of the vocabulary, away from the special image/pad ids.
    text = torch.randint(5, min(text_cfg.vocab_size, 1000), (batch_size, prompt_len), generator=g)
    special = [getattr(config, k, None) for k in
               ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id",
                "vision_end_token_id", "pad_token_id")]
    for sid in {s for s in special if s is not None}:
        text[text == sid] = 5  # a stray placeholder id would change the image-token count
    img = torch.full((batch_size, n_img), image_token if family.image_in_text else 0, dtype=torch.long)
    if family.bert_prompt:  # [CLS] text [SEP], as BERT-style processors build it (cross-attention: no image ids)
        text[:, 0], text[:, -1] = text_cfg.bos_token_id, text_cfg.sep_token_id
    if family.image_wrap:
        start = torch.full((batch_size, 1), config.vision_start_token_id)
        end = torch.full((batch_size, 1), config.vision_end_token_id)
        img = torch.cat([start, img, end], dim=1)
    out: dict[str, torch.Tensor] = {}
    if family.pixel_layout == "patches":
        side = QWEN_SYNTHETIC_SIDE // vc.patch_size
        patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        # (sum over images of t*h*w patches, C*T*P*P): Qwen's flattened patch layout.
        out["pixel_values"] = torch.randn(batch_size * side * side, patch_dim, generator=g)
        out["image_grid_thw"] = torch.tensor([[1, side, side]] * batch_size)
    else:
        shape = (batch_size, 3, vc.image_size, vc.image_size)
        if family.pixel_layout == "tiles":
            shape = (batch_size, 1, 3, vc.image_size, vc.image_size)  # (B, images per sample, C, H, W)
        out["pixel_values"] = torch.randn(*shape, generator=g)
    out["input_ids"] = torch.cat([img, text], dim=1)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    if family.token_type_ids:
        out["token_type_ids"] = torch.cat([torch.zeros_like(img), torch.ones_like(text)], dim=1)
    return out


def fixed_inputs(model, processor=None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The deterministic input used to compare logits across save/reload."""
    if processor is not None:
        return processor_inputs(model, processor, [fixed_image(seed=seed)], [FIXED_PROMPT])
    return synthetic_inputs(model, seed=seed)
