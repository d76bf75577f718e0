"""Tiny VLMs of every registered family, built offline from configs (no hub, random weights).

The test suite uses them; the embedded demo model reuses `word_tokenizer` and the LLaVA layout.
Sizes follow the DESIGN.md rules: hidden sizes multiples of 64, at least 2 decoder layers, and the
LLaVA model has 8 query heads over 4 KV heads so GQA code paths run.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BASE_WORDS = (
    "a an the one two three of and on in with is are image picture photo provide sentence caption for "
    "provided answer question using single word phrase what color shape red green blue yellow white "
    "black purple orange gray circle square triangle diamond small large left right top bottom center "
    "middle background there shapes"
).split()
PUNCT = [".", ",", ":", "?", "-", "!"]

LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
IDEFICS3_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def word_tokenizer(words, special_tokens=("<image>",)) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer built in memory: ids 0-3 are <pad>, <unk>, <s>, </s>."""
    vocab: dict[str, int] = {}
    for tok in ["<pad>", "<unk>", "<s>", "</s>", *special_tokens, "USER", "ASSISTANT", "User", "Assistant",
                *PUNCT, *words]:
        vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, glues punctuation
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        padding_side="left",
    )
    tok.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    return tok


def _vocab(tok) -> int:
    # Multiple of 64 keeps embedding/lm_head shapes on the bnb 4-bit fast path.
    return -(-len(tok) // 64) * 64


def tiny_llava(seed: int = 0, *, layers: int = 2, hidden: int = 64, intermediate: int = 256,
               heads: int = 8, kv_heads: int = 4, image_size: int = 32, patch: int = 8, words=BASE_WORDS):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    tok = word_tokenizer(words)
    image_proc = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    # num_additional_image_tokens=1: CLIP emits a CLS token that the "default" strategy drops (DESIGN.md).
    proc = LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=LLAVA_CHAT_TEMPLATE)
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=2, image_size=image_size, patch_size=patch, projection_dim=hidden)
    text = LlamaConfig(vocab_size=_vocab(tok), hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       head_dim=hidden // heads, max_position_embeddings=512, rms_norm_eps=1e-5,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval(), proc


def tiny_idefics3(seed: int = 0):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor
    from transformers import Idefics3Processor, Idefics3VisionConfig, LlamaConfig

    tok = word_tokenizer(BASE_WORDS, ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"))
    image_proc = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                        max_image_size={"longest_edge": 32})
    # 32 px / 8 px patches = 16 patches, pixel-shuffled by scale_factor 2 -> 4 image tokens.
    proc = Idefics3Processor(image_processor=image_proc, tokenizer=tok, image_seq_len=4,
                             chat_template=IDEFICS3_CHAT_TEMPLATE)
    vision = Idefics3VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=_vocab(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = Idefics3Config(vision_config=vision.to_dict(), text_config=text.to_dict(), scale_factor=2,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return Idefics3ForConditionalGeneration(config).eval(), proc


def tiny_paligemma(seed: int = 0):
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration
    from transformers import PaliGemmaProcessor, SiglipImageProcessor, SiglipVisionConfig

    tok = word_tokenizer(BASE_WORDS)
    image_proc = SiglipImageProcessor(size={"height": 32, "width": 32})
    image_proc.image_seq_length = 16  # (32 / 8)^2 patches, no CLS in SigLIP
    proc = PaliGemmaProcessor(image_processor=image_proc, tokenizer=tok)
    vision = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8, projection_dim=64)
    text = GemmaConfig(vocab_size=_vocab(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=16, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       hidden_activation="gelu_pytorch_tanh")
    config = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), projection_dim=64,
                             image_token_index=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return PaliGemmaForConditionalGeneration(config).eval(), proc


def tiny_qwen2_5_vl(seed: int = 0, *, heads: int = 4, kv_heads: int = 2):
    """Qwen2.5-VL model only: its processor needs a video processor, which needs torchvision (not on CI)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=heads,
                num_key_value_heads=kv_heads, pad_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64, window_size=16, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=100, video_token_id=101,
                              vision_start_token_id=102, vision_end_token_id=103)
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval(), None


def tiny_blip2(seed: int = 0):
    """BLIP-2 with an OPT decoder (no GLU MLP: benchmark yes, GLU pruning no); model only."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    config = Blip2Config(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                            encoder_hidden_size=64),
        text_config=dict(model_type="opt", vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                         num_attention_heads=4, word_embed_proj_dim=64, pad_token_id=1),
        num_query_tokens=4, image_token_index=120,
    )
    torch.manual_seed(seed)
    return Blip2ForConditionalGeneration(config).eval(), None


def bert_word_tokenizer(words) -> PreTrainedTokenizerFast:
    """A word-level BERT-style tokenizer: "[CLS] text [SEP]" like BLIP's BertTokenizer, with [DEC] as bos
    (BLIP's generate swaps [CLS] for it); ids 0-5 are [PAD], [UNK], [CLS], [SEP], [MASK], [DEC]."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab: dict[str, int] = {}
    for tok in [*specials, *PUNCT, *words]:
        vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.decoder = decoders.WordPiece(prefix="##")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", bos_token="[DEC]")


def tiny_blip(seed: int = 0):
    """BlipForConditionalGeneration (captioning): ViT tower + BERT-style decoder cross-attending to it; with
    an offline BlipProcessor (32 px images, word-level BERT-style tokenizer)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tok = bert_word_tokenizer(BASE_WORDS)
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("[PAD]", "[SEP]", "[DEC]")}
    config = BlipConfig(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        # eos = sep: BLIP's generate stops at sep_token_id (the hub config's eos_token_id 2 is unused there)
        text_config=dict(vocab_size=_vocab(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128, pad_token_id=ids["[PAD]"],
                         bos_token_id=ids["[DEC]"], sep_token_id=ids["[SEP]"], eos_token_id=ids["[SEP]"]),
    )
    torch.manual_seed(seed)
    return BlipForConditionalGeneration(config).eval(), proc


TINY_MODELS = {
    "llava": tiny_llava,
    "idefics3": tiny_idefics3,
    "paligemma": tiny_paligemma,
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "blip-2": tiny_blip2,
    "blip": tiny_blip,
}


def tiny_model(family: str, seed: int = 0):
    """(model in eval mode, processor or None) for a registered family."""
    return TINY_MODELS[family](seed)
