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
    # the step traced as one graph, no break (on a CPU there is no CUDA graph to skip)
    expected = {"graphs": 1 if compile_step else 0, "graph_breaks": 0, "cudagraph_skips": 0,
                "cudagraph_copied_inputs": 0}
    assert dec.compile_stats == expected


def test_every_decode_reuses_one_cache_at_the_same_addresses_and_starts_empty():
    """The K/V tensors are static inputs of the recorded CUDA graph: a new address re-records the step inside a
    timed decode (docs/performance.md). Reuse must not leak one decode's cache into the next."""
    model, proc = tiny_model("llava")
    long = processor_inputs(model, proc, [fixed_image(seed=1)], ["Provide a one-sentence caption for the provided image."])
    short = processor_inputs(model, proc, [fixed_image(seed=2)], ["what shape"])
    dec = CompiledDecoder(model, batch_size=1, max_cache_len=96, compile=False)
    first = dec.decode(long, 10, ignore_eos=True).tokens
    keys = [layer.keys.data_ptr() for layer in dec._cache.layers]
    after_long = dec.decode(short, 10, ignore_eos=True).tokens
    assert [layer.keys.data_ptr() for layer in dec._cache.layers] == keys
    fresh = CompiledDecoder(model, batch_size=1, max_cache_len=96, compile=False)
    assert torch.equal(after_long, fresh.decode(short, 10, ignore_eos=True).tokens)  # nothing left over
    assert torch.equal(dec.decode(long, 10, ignore_eos=True).tokens, first)


def test_dynamo_counts_see_a_graph_break():
    from vlmslim.benchmarks.engine import dynamo_counts

    def f(x):
        x = x + 1
        torch._dynamo.graph_break()
        return x * 2

    torch._dynamo.reset()
    before = dynamo_counts()
    assert torch.equal(torch.compile(f, backend="eager")(torch.ones(3)), torch.full((3,), 4.0))
    after = dynamo_counts()
    assert after["graphs"] - before["graphs"] == 2 and after["graph_breaks"] - before["graph_breaks"] == 1


def test_decoder_refuses_unsupported_family_and_oversized_input():
    model, _ = tiny_model("qwen2_5_vl")
    with pytest.raises(ValueError, match="--engine eager"):
        CompiledDecoder(model, 1, 64, compile=False)
    model, proc = tiny_model("llava")
    inputs = processor_inputs(model, proc, [fixed_image()], ["a"])
    with pytest.raises(ValueError, match="decoder built for batch 1"):
        CompiledDecoder(model, 1, 16, compile=False).decode(inputs, 12)


def test_compiled_decoder_fuses_projections_unless_told_not_to():
    from vlmslim.families import get_family
    from vlmslim.fusion import fused_groups
    from vlmslim.quantization import load_quantized

    model, proc = tiny_model("llava")
    layers = len(get_family(model).decoder_layers(model))
    dec = CompiledDecoder(model, 1, 64, compile=False, fuse=False)
    assert not dec.fused and fused_groups(model) == 0
    inputs = processor_inputs(model, proc, [fixed_image()], ["a red circle"])
    unfused = dec.decode(inputs, 8, ignore_eos=True).tokens
    dec = CompiledDecoder(model, 1, 64, compile=False)  # the default: q|k|v and gate|up fused, in place
    assert dec.fused and fused_groups(model) == 2 * layers
    assert torch.equal(dec.decode(inputs, 8, ignore_eos=True).tokens, unfused)
    nf4, _ = load_quantized("demo", "nf4")
    assert not CompiledDecoder(nf4, 1, 64, compile=False).fused  # bitsandbytes layers: decoded unfused


def test_bench_protocol_records_the_attention_that_runs_and_resume_refuses_a_change(tmp_path, monkeypatch):
    from vlmslim import attention
    from vlmslim.benchmarks import results as res
    from vlmslim.benchmarks.random_weights import ArchBenchConfig
    from vlmslim.benchmarks.run import BenchConfig
    from vlmslim.errors import BenchmarkError

    out = str(tmp_path / "r")
    # split asked for by default, recorded only where it runs: compiled, a CUDA device, Triton
    assert BenchConfig(model="demo", data="d", out=out, engine="compiled", device="cpu").attention == "sdpa"
    monkeypatch.setattr(attention, "available", lambda device: device.type == "cuda")
    assert BenchConfig(model="demo", data="d", out=out, engine="compiled", device="cuda").attention == "split"
    assert BenchConfig(model="demo", data="d", out=out, engine="compiled", device="cuda",
                       attention="sdpa").attention == "sdpa"
    assert BenchConfig(model="demo", data="d", out=out, device="cuda").attention == "sdpa"  # eager
    assert ArchBenchConfig("llava-1.5-7b", out=out, engines=("eager", "compiled")).attention == "split"
    assert ArchBenchConfig("llava-1.5-7b", out=out, engines=("eager", "compiled"), device="cpu").attention == "sdpa"
    with pytest.raises(ValueError, match="attention must be one of split, sdpa, got 'flash'"):
        BenchConfig(model="demo", data="d", out=out, engine="compiled", attention="flash")
    split = BenchConfig(model="demo", data="d", out=out, engine="compiled", device="cuda")
    gen = {k: getattr(split, k) for k in res.PROTOCOL_KEYS}
    record = {"checkpoint_sha256": "a", "dataset_sha256": "b", "checkpoint_files": {}}
    before_split = {**record, "generation": {k: v for k, v in gen.items() if k != "attention"}}
    with pytest.raises(BenchmarkError, match="attention: 'sdpa' -> 'split'"):
        res.check_resumable(tmp_path, before_split, {**record, "generation": gen})
    res.check_resumable(tmp_path, before_split, {**record, "generation": {**gen, "attention": "sdpa"}})


def test_bench_protocol_records_fusion_and_resume_refuses_a_change(tmp_path):
    from vlmslim.benchmarks import results as res
    from vlmslim.benchmarks.run import BenchConfig
    from vlmslim.errors import BenchmarkError

    assert BenchConfig(model="demo", data="d", out=str(tmp_path / "e")).fuse is False  # eager never fuses
    compiled = BenchConfig(model="demo", data="d", out=str(tmp_path / "c"), engine="compiled")
    assert compiled.fuse is True
    assert BenchConfig(model="demo", data="d", out=str(tmp_path / "u"), engine="compiled", fuse=False).fuse is False
    gen = {k: getattr(compiled, k) for k in res.PROTOCOL_KEYS}
    record = {"checkpoint_sha256": "a", "dataset_sha256": "b", "checkpoint_files": {}}
    before_fusion = {**record, "generation": {k: v for k, v in gen.items() if k != "fuse"}}
    with pytest.raises(BenchmarkError, match="fuse: False -> True"):
        res.check_resumable(tmp_path, before_fusion, {**record, "generation": gen})
    res.check_resumable(tmp_path, before_fusion, {**record, "generation": {**gen, "fuse": False}})  # same protocol
