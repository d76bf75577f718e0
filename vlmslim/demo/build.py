"""The embedded miniature VLM: the real LLaVA architecture at captioner-of-shapes size.

CLIP-style vision tower on 64-px images (8-px patches -> 64 image tokens + CLS), a 2-layer GELU
projector, and a Llama decoder with GLU MLP and GQA (8 query heads over 4 KV heads). Every width is a
multiple of 64, so pruned widths (rounded to 64) and bitsandbytes 4-bit kernels both work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor)

from vlmslim.data.synthetic import vocabulary
from vlmslim.inputs import FIXED_PROMPT
from vlmslim.testing import LLAVA_CHAT_TEMPLATE, word_tokenizer

CAPTION_PROMPT = FIXED_PROMPT  # the benchmark's pinned caption instruction: trained on what it is judged on


@dataclass(frozen=True)
class DemoArchitecture:
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_intermediate: int = 512
    vision_layers: int = 3  # LLaVA reads layer -2, so the last one is dead weight (--trim-vision)
    vision_heads: int = 4
    hidden: int = 256
    intermediate: int = 768
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4

    def __post_init__(self) -> None:
        for name in ("vision_hidden", "vision_intermediate", "hidden", "intermediate"):
            if getattr(self, name) % 64:
                raise ValueError(f"{name} must be a multiple of 64, got {getattr(self, name)}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")


def demo_words() -> list[str]:
    """Caption vocabulary plus the words of the benchmark prompts (so no prompt word is <unk>)."""
    prompt_words = CAPTION_PROMPT.lower().replace(".", " ").replace("-", " - ").split()
    return sorted(set(vocabulary()) | set(prompt_words) | {"Provide"})


def build_processor(arch: DemoArchitecture = DemoArchitecture()) -> LlavaProcessor:
    tok = word_tokenizer(demo_words())
    image_proc = CLIPImageProcessor(
        size={"shortest_edge": arch.image_size},
        crop_size={"height": arch.image_size, "width": arch.image_size},
    )
    # num_additional_image_tokens=1: CLIP's CLS token, dropped by the "default" feature strategy.
    return LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=arch.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=LLAVA_CHAT_TEMPLATE)


def build_model(processor: LlavaProcessor, arch: DemoArchitecture = DemoArchitecture(), seed: int = 0):
    tok = processor.tokenizer
    vocab = -(-len(tok) // 64) * 64
    vision = CLIPVisionConfig(hidden_size=arch.vision_hidden, intermediate_size=arch.vision_intermediate,
                              num_hidden_layers=arch.vision_layers, num_attention_heads=arch.vision_heads,
                              image_size=arch.image_size, patch_size=arch.patch_size,
                              projection_dim=arch.vision_hidden)
    text = LlamaConfig(vocab_size=vocab, hidden_size=arch.hidden, intermediate_size=arch.intermediate,
                       num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
                       num_key_value_heads=arch.kv_heads, head_dim=arch.hidden // arch.heads,
                       max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config)
