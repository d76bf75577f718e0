import pytest
import torch

from vlmslim.benchmarks.engine import CompiledDecoder
from vlmslim.inputs import fixed_image, processor_inputs
from vlmslim.testing import tiny_model


@pytest.mark.parametrize("compile_step", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_static_cache_decoder_matches_generate_with_left_padding(compile_step):
    model, proc = tiny_model("llava")
    prompts = ["a red circle", "Provide a one-sentence caption for the provided image.", "what shape"]
    inputs = processor_inputs(model, proc, [fixed_image(seed=i) for i in range(3)], prompts)
    assert (inputs["attention_mask"] == 0).any()  # rows really are left-padded
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=12, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    dec = CompiledDecoder(model, batch_size=3, max_cache_len=64, compile=compile_step)
    out = dec.decode(inputs, 12, eos_token_id=None, ignore_eos=True)
    assert out.tokens.shape == (3, 12) and out.decode_steps == 11
    assert torch.equal(out.tokens, ref)


def test_decoder_refuses_unsupported_family_and_oversized_input():
    model, _ = tiny_model("qwen2_5_vl")
    with pytest.raises(ValueError, match="--engine eager"):
        CompiledDecoder(model, 1, 64, compile=False)
    model, proc = tiny_model("llava")
    inputs = processor_inputs(model, proc, [fixed_image()], ["a"])
    with pytest.raises(ValueError, match="decoder built for batch 1"):
        CompiledDecoder(model, 1, 16, compile=False).decode(inputs, 12)
