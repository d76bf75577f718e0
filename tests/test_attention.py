"""Split-K decode attention (vlmslim.attention): the plan covers the cache, the Triton kernels equal plain
attention in Triton's interpreter (padding, grouped heads, splits with nothing to attend), and the
transformers hook leaves every row that is not a GPU decode row to SDPA."""

from __future__ import annotations

import textwrap

import pytest
import torch

from vlmslim import attention
from vlmslim.benchmarks.engine import CompiledDecoder
from vlmslim.inputs import fixed_image, processor_inputs
from vlmslim.testing import tiny_model


@pytest.mark.parametrize("batch_heads, length, programs", [(32, 664, 528), (32, 40, 528), (1, 4096, 528),
                                                           (256, 664, 528)])
def test_plan_covers_the_cache_in_whole_blocks(batch_heads, length, programs):
    chunk, splits = attention.plan(batch_heads, length, programs)
    assert chunk % attention.BLOCK_L == 0
    assert (splits - 1) * chunk < length <= splits * chunk  # every position once, no empty split
    assert batch_heads * splits <= max(programs, batch_heads) + batch_heads  # about `programs` programs
    if batch_heads * -(-length // attention.BLOCK_L) >= programs:
        assert batch_heads * splits >= programs // 2  # enough to fill the GPU when the cache allows


_INTERPRETED = textwrap.dedent("""
    import torch
    from vlmslim import attention
    torch.manual_seed(0)
    errs = []
    for b, h, hkv, length, d, programs in [(2, 4, 2, 150, 32, 16), (1, 2, 2, 300, 64, 12), (3, 2, 1, 70, 16, 4)]:
        q = torch.randn(b, h, 1, d)
        k, v = torch.randn(b, hkv, length, d), torch.randn(b, hkv, length, d)
        mask = torch.zeros(b, 1, 1, length, dtype=torch.bool)
        mask[..., : length // 3] = True  # the rest: static-cache slots not written yet (whole splits masked)
        mask[0, ..., :5] = False  # left padding in the first sequence
        # as transformers hands it over: the last query row of a wider 4-D mask, one row expanded over the batch
        wide = torch.zeros(1, 1, 3, length + 7, dtype=torch.bool)
        wide[..., : length // 2] = True
        shared = wide[:, :, -1:, :length].expand(b, 1, 1, length)
        for m in (mask, None, shared):
            ref = attention.reference(q, k, v, m, d ** -0.5)
            for cfg in (attention.LaunchConfig(32, 4, 4), attention.LaunchConfig(16, 8, 2)):  # two tile sizes
                out = attention._split_attention(q, k, v, m, d ** -0.5, programs=programs, cfg=cfg)
                assert out.dtype == q.dtype and out.shape == q.shape
                errs.append(float((out - ref).abs().max()))
    print(max(errs), len(errs))
""")


def test_split_kernels_equal_plain_attention_in_the_interpreter(interpret):
    worst, count = interpret(_INTERPRETED).split()
    assert int(count) == 18 and float(worst) < 1e-5


def test_split_is_the_default_where_it_runs_and_sdpa_elsewhere():
    """The compiled decoder asks for split attention by default; on a CPU (or without Triton) it records and
    runs SDPA, leaving the config alone. The hook itself, if reached on a CPU, hands the row to SDPA."""
    from vlmslim.benchmarks.engine import decode_attention

    model, proc = tiny_model("llava")
    inputs = processor_inputs(model, proc, [fixed_image(seed=i) for i in range(2)], ["a red circle", "what shape"])
    with torch.no_grad():
        ref_logits = model(**inputs).logits
    ref = CompiledDecoder(model, 2, 64, compile=False, fuse=False, attention="sdpa").decode(inputs, 8, ignore_eos=True)
    dec = CompiledDecoder(model, 2, 64, compile=False, fuse=False)
    assert dec.attention == "sdpa" and decode_attention("split", "cpu") == "sdpa"
    assert model.config.text_config._attn_implementation != attention.NAME
    assert torch.equal(dec.decode(inputs, 8, ignore_eos=True).tokens, ref.tokens)
    attention.enable(model.config.text_config)  # the hook on a CPU: the SDPA function itself
    assert model.config.text_config._attn_implementation == attention.NAME
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, ref_logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="attention must be one of split, sdpa"):
        CompiledDecoder(model, 2, 64, compile=False, attention="flash")


def test_hook_decodes_every_layer_through_the_split_op(monkeypatch):
    """The wiring (mask row, grouped heads, shapes, the transpose back) end to end on the CPU: the op's
    kernels replaced by the plain-torch reference, decoding must give SDPA's tokens, one op call per layer
    and decode step, and no call for the prefill."""
    model, proc = tiny_model("llava")
    inputs = processor_inputs(model, proc, [fixed_image(seed=i) for i in range(2)], ["a red circle", "what shape"])
    assert (inputs["attention_mask"] == 0).any()  # left padding reaches the mask row
    ref = CompiledDecoder(model, 2, 64, compile=False, fuse=False, attention="sdpa").decode(inputs, 8,
                                                                                          ignore_eos=True).tokens
    calls = []

    def fake_kernels(q, k, v, mask, scale):
        calls.append((tuple(q.shape), tuple(k.shape), None if mask is None else tuple(mask.shape)))
        return attention.reference(q, k, v, mask, scale)

    monkeypatch.setattr(attention, "available", lambda device: True)
    monkeypatch.setattr(attention, "tuned_attention", fake_kernels)
    dec = CompiledDecoder(model, 2, 64, compile=False, fuse=False, attention="split")
    out = dec.decode(inputs, 8, ignore_eos=True)
    assert torch.equal(out.tokens, ref)
    text = model.config.text_config
    layers, heads, kv = text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads
    d = text.hidden_size // heads
    # 7 decode steps + the CompiledDecoder's warm-up step on CUDA only (here: none), every layer
    assert len(calls) == out.decode_steps * layers
    assert set(calls) == {((2, heads, 1, d), (2, kv, 64, d), (2, 1, 1, 64))}


@pytest.mark.slow  # a dynamo trace of the demo's decode step (~3 s)
def test_decode_step_with_the_split_op_is_one_graph(monkeypatch):
    from studies.graph_breaks import explain_step
    from vlmslim.loading import load_model

    monkeypatch.setattr(attention, "available", lambda device: True)  # the op's path, traced on the CPU
    monkeypatch.setattr(attention, "tuned_attention", lambda q, k, v, mask, scale: attention.reference(q, k, v, mask, scale))
    model, processor = load_model("demo")
    row = explain_step(model.eval(), processor, "cpu", attention="split")
    assert (row["graphs"], row["graph_breaks"]) == (1, 0), row["break_reasons"]
    torch._dynamo.reset()
