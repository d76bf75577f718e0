"""Model-family adapters: where each VLM keeps its parts, and how to prompt it.

Every step reads this registry instead of guessing module names: pruning finds decoder layers and
their attention/MLP projections here, quantization builds its skip lists from the component paths,
the census groups parameters by component, and the benchmark builds prompts. A new family is one
`Family` entry plus a tiny test model in `vlmslim.testing`.

Dotted paths are relative to the top-level `*ForConditionalGeneration` module (transformers 5 layout).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from vlmslim.errors import UnsupportedFamilyError
from vlmslim.prompts import CAPTION_PROMPT

if TYPE_CHECKING:  # annotations only: the registry itself is torch-free (`vlmslim inspect` reads it)
    import torch
    from torch import nn

COMPONENTS = ("vision", "projector", "language", "lm_head")
QWEN_SYNTHETIC_SIDE = 448  # px of the synthetic image Qwen2.5-VL inputs are built for (no fixed image size)


# ---------------------------------------------------------------- image tokens per image, from the config


def _grid_tokens(config) -> int:
    vc = config.vision_config
    return (vc.image_size // vc.patch_size) ** 2


def _llava_tokens(config) -> int:
    # "default" drops the CLS token, "full" keeps it
    return _grid_tokens(config) + (getattr(config, "vision_feature_select_strategy", "default") == "full")


def _idefics3_tokens(config) -> int:
    return _grid_tokens(config) // config.scale_factor**2  # pixel shuffle merges scale_factor^2 patches


def _qwen_tokens(config) -> int:
    side = QWEN_SYNTHETIC_SIDE // config.vision_config.patch_size
    return side * side // config.vision_config.spatial_merge_size**2  # the merger pools 2x2 patches


def _query_tokens(config) -> int:
    return config.num_query_tokens  # BLIP-2's Q-Former output length


def _no_image_tokens(config) -> int:
    return 0  # BLIP: the text decoder cross-attends to the vision output; no placeholders in the text


@dataclass(frozen=True)
class Family:
    model_type: str
    vision: tuple[str, ...]
    projector: tuple[str, ...]
    language: str  # the decoder stack (a *Model with `.layers`/`.embed_tokens`)
    lm_head: str = "lm_head"
    layers: str = "layers"  # relative to `language`
    vision_layers: str | None = None  # encoder layer list, relative to the top model (transformers 5.2x layout)
    attn: str = "self_attn"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    mlp: str = "mlp"
    # GLU MLP: down(act(gate(x)) * up(x)). None for families with a plain 2-layer MLP (OPT).
    gate_proj: str | None = "gate_proj"
    up_proj: str | None = "up_proj"
    down_proj: str | None = "down_proj"
    text_config: str = "text_config"
    chat_template: bool = True  # False: the processor takes the instruction as plain text (PaliGemma)
    # Inputs without a processor (architecture-only runs, the reload check of processor-less dirs):
    image_tokens: Callable[[object], int] = _grid_tokens  # placeholder tokens per image, from the config
    # "image": (B, 3, H, W); "tiles": (B, images, 3, H, W); "patches": Qwen's flattened (sum t*h*w, C*T*P*P)
    pixel_layout: str = "image"
    image_wrap: bool = False  # vision_start / vision_end tokens around the image tokens (Qwen2.5-VL)
    token_type_ids: bool = False  # 0 for image/prefix tokens, 1 for the suffix (PaliGemma)
    # The compiled decode engine needs 1-D positions; mrope (Qwen2.5-VL: 3-D position ids offset by rope
    # deltas) is not wired into the static step, and BLIP-2's OPT decoder is not a `*Model` with `.layers`.
    compiled_decode: bool = True
    # The decoder layers call q/k/v (and gate/up) on one input, first sibling first: `vlmslim.fusion` may
    # run each group as one product. Set only where a test checks fused logits against unfused ones.
    fusable_projections: bool = False
    # `--image-tokens K` (vlmslim.tokens): one square grid of image tokens per image, cut after the projector.
    token_reduction: bool = False
    # Why `--heads` cannot prune this family (None: it can). Checked before any scoring.
    heads_unsupported: str | None = None
    # BLIP captioning: no instruction, only a text prefix that the decoder continues (HF's model card
    # uses "a picture of"); any other task (VQA) needs another model class and is refused.
    caption_prefix: str | None = None
    # BERT-style text (BLIP): the processor wraps the text in [CLS] ... [SEP]; the model's own `generate`
    # swaps [CLS] for the [DEC] bos, drops [SEP], passes pad_token_id / eos_token_id (= sep_token_id) to
    # the decoder itself (a second pad_token_id is a TypeError) and echoes that edited prompt.
    bert_prompt: bool = False

    @property
    def has_glu(self) -> bool:
        return self.gate_proj is not None

    def component_paths(self) -> dict[str, tuple[str, ...]]:
        return {
            "vision": self.vision,
            "projector": self.projector,
            "language": (self.language,),
            "lm_head": (self.lm_head,),
        }

    def component_of(self, name: str) -> str:
        """Component ("vision", "projector", "language", "lm_head", "other") owning a parameter/module name."""
        best, best_len = "other", -1
        for comp, paths in self.component_paths().items():
            for p in paths:
                if (name == p or name.startswith(p + ".")) and len(p) > best_len:
                    best, best_len = comp, len(p)
        return best

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.language)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.language_model(model).get_submodule(self.layers)

    def vision_layer_list(self, model: nn.Module) -> nn.ModuleList:
        """The vision encoder's layers. Older transformers 5.x (e.g. 5.17) nest CLIP/SigLIP towers one level
        deeper (`vision_tower.vision_model.encoder`); that layout is tried when the 5.2x path is absent."""
        if self.vision_layers is None:
            raise UnsupportedFamilyError(f"{self.model_type}: vision layer list unknown")
        candidates = [self.vision_layers]
        if "vision_tower.encoder." in self.vision_layers:
            candidates.append(self.vision_layers.replace("vision_tower.encoder.", "vision_tower.vision_model.encoder."))
        for path in candidates:
            try:
                return model.get_submodule(path)
            except AttributeError:
                continue
        raise UnsupportedFamilyError(f"{self.model_type}: no vision layer list at {' or '.join(candidates)}")

    @property
    def image_in_text(self) -> bool:
        """Image placeholder tokens in input_ids (False: the decoder cross-attends to the vision output)."""
        return self.image_tokens is not _no_image_tokens

    def get_text_config(self, config):
        return getattr(config, self.text_config)

    def echoed_prompt(self, input_ids: torch.Tensor, config) -> torch.Tensor:
        """The prompt ids (B, L') that `model.generate` returns before the answer, from the processor's ids."""
        if not self.bert_prompt:
            return input_ids  # decoder-only generate returns prompt + answer
        ids = input_ids[:, :-1].clone()  # [SEP] dropped
        ids[:, 0] = self.get_text_config(config).bos_token_id  # [CLS] -> [DEC]
        return ids

    def generate_kwargs(self, pad_token_id: int | None) -> dict:
        """Special ids to pass to `model.generate` (none where the model's generate sets them itself)."""
        return {} if self.bert_prompt else {"pad_token_id": pad_token_id}

    def stop_token_ids(self, config) -> set[int] | None:
        """The ids generation stops at where the family fixes them (None: the generation config's EOS)."""
        if self.bert_prompt:
            return {int(self.get_text_config(config).sep_token_id)}
        return None

    def build_prompt(self, processor, instruction: str) -> str:
        """The text the processor needs for one image + instruction, ending where the answer starts."""
        if self.caption_prefix is not None:
            if instruction != CAPTION_PROMPT:
                raise UnsupportedFamilyError(
                    f"{self.model_type}: this captioning model takes no instruction, only the caption task "
                    f"(its text prefix {self.caption_prefix!r}); VQA needs BlipForQuestionAnswering, not wired")
            return self.caption_prefix
        if not self.chat_template:
            return instruction
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in [
        Family(
            model_type="llava",
            vision=("model.vision_tower",),
            projector=("model.multi_modal_projector",),
            language="model.language_model",
            vision_layers="model.vision_tower.encoder.layers",
            image_tokens=_llava_tokens,
            token_reduction=True,
            fusable_projections=True,
        ),
        Family(
            model_type="idefics3",
            vision=("model.vision_model",),
            projector=("model.connector",),
            language="model.text_model",
            vision_layers="model.vision_model.encoder.layers",
            image_tokens=_idefics3_tokens,
            pixel_layout="tiles",
            fusable_projections=True,
        ),
        Family(
            model_type="qwen2_5_vl",
            # The patch merger is Qwen's projector but lives inside `visual`: the longest prefix wins.
            vision=("model.visual",),
            projector=("model.visual.merger",),
            language="model.language_model",
            vision_layers="model.visual.blocks",
            image_tokens=_qwen_tokens,
            pixel_layout="patches",
            image_wrap=True,
            compiled_decode=False,
            fusable_projections=True,
        ),
        Family(
            model_type="paligemma",
            vision=("model.vision_tower",),
            projector=("model.multi_modal_projector",),
            language="model.language_model",
            vision_layers="model.vision_tower.encoder.layers",
            chat_template=False,
            token_type_ids=True,
            fusable_projections=True,
        ),
        Family(
            model_type="blip-2",
            vision=("vision_model",),
            projector=("qformer", "language_projection", "query_tokens"),
            language="language_model.model.decoder",
            lm_head="language_model.lm_head",
            vision_layers="vision_model.encoder.layers",
            o_proj="out_proj",
            gate_proj=None,
            up_proj=None,
            down_proj=None,
            chat_template=False,
            image_tokens=_query_tokens,
            compiled_decode=False,
        ),
        Family(
            # BlipForConditionalGeneration (Salesforce/blip-image-captioning-*): ViT vision tower whose
            # output the BERT-style text decoder reads through cross-attention in every layer; no projector.
            model_type="blip",
            vision=("vision_model",),
            projector=(),
            language="text_decoder.bert",
            lm_head="text_decoder.cls",  # transform (dense + LayerNorm) + decoder tied to word_embeddings
            layers="encoder.layer",
            vision_layers="vision_model.encoder.layers",
            attn="attention",  # BlipTextAttention: .self (query/key/value) + .output.dense
            q_proj="self.query",
            k_proj="self.key",
            v_proj="self.value",
            o_proj="output.dense",
            mlp="intermediate",  # BERT MLP: intermediate.dense -> gelu -> output.dense (siblings, no GLU)
            gate_proj=None,
            up_proj=None,
            down_proj=None,
            chat_template=False,
            image_tokens=_no_image_tokens,
            compiled_decode=False,  # cross-attention to the image + BERT layer list: not the static step
            # Feasible later: the forward reshapes with -1 heads but reads `attention.self.all_head_size`,
            # which `shapes.set_head_attributes` does not set, and the config's head count is shared with
            # the cross-attention (so a pruned checkpoint is never stock-loadable). Refused until wired+tested.
            heads_unsupported=(
                "BLIP's text self-attention keeps its width in attention.self.all_head_size and shares "
                "num_attention_heads with the cross-attention; vlmslim's head surgery does not handle either yet"),
            caption_prefix="a picture of",
            bert_prompt=True,
        ),
    ]
}
# SmolVLM(2) ships its own model_type with Idefics3's module layout.
FAMILIES["smolvlm"] = replace(FAMILIES["idefics3"], model_type="smolvlm")


def get_family(model_or_config) -> Family:
    """The adapter for a model, a config, or a `model_type` string; a clear error for unknown families."""
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedFamilyError(
            f"unsupported model family {model_type!r}; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def first_param_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
