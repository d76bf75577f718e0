"""Fused q|k|v and gate|up projections (vlmslim.fusion): same logits as the separate layers in every family
that allows it, no second copy of the weights, the original modules back afterwards, and a compiled
decode step that still traces as one graph and decodes the eager tokens."""

from __future__ import annotations

import pytest
import torch

from vlmslim.families import get_family
from vlmslim.fusion import FusedProjection, SiblingRows, fuse_projections, fused_projections, unfuse_projections
from vlmslim.inputs import synthetic_inputs
from vlmslim.quantization import load_quantized


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_fused_logits_equal_separate_in_every_fusable_family(any_family):
    name, model, _ = any_family
    family = get_family(model)
    if not family.fusable_projections:
        with pytest.raises(ValueError, match="projection fusion is not supported"):
            fuse_projections(model)
        return
    inputs = synthetic_inputs(model, 2, 6, 0)
    ref = _logits(model, inputs)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = len(family.decoder_layers(model))
    with fused_projections(model):
        layer = family.decoder_layers(model)[0]
        q = layer.get_submodule(f"{family.attn}.{family.q_proj}")
        assert isinstance(q, FusedProjection) and isinstance(layer.get_submodule(f"{family.attn}.{family.v_proj}"),
                                                                SiblingRows)
        # the originals' weights are views into the fused weight: no second copy while fused
        k = q._originals[1].weight
        assert k.untyped_storage().data_ptr() == q.fused.weight.untyped_storage().data_ptr()
        fused = _logits(model, inputs)
        assert fuse_projections(model) == 0  # already fused: nothing to do
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)
    torch.testing.assert_close(_logits(model, inputs), ref, rtol=0, atol=0)
    assert layers == len(family.decoder_layers(model))


@pytest.mark.parametrize("recipe", ["int4wo", "int8wo", "int8dq"])
def test_fused_quantized_layers_give_the_same_logits(recipe):
    model, _ = load_quantized("demo", recipe)
    model.eval()
    inputs = synthetic_inputs(model, 1, 6, 0)
    inputs["input_ids"] = inputs["input_ids"][:, :1]  # one row: the decode kernels, not the prefill GEMM
    inputs.pop("pixel_values")
    inputs["attention_mask"] = inputs["attention_mask"][:, :1]
    ref = _logits(model, inputs)
    n = fuse_projections(model)
    assert n == 2 * len(get_family(model).decoder_layers(model))
    fused = _logits(model, inputs)
    first = next(m for m in model.modules() if isinstance(m, FusedProjection))
    if recipe != "int8wo":  # while fused, the originals hold no derived kernel layout (a second copy otherwise)
        assert all(m._packed is None for m in first._originals)
    if recipe == "int4wo":
        assert all(m._scales_zeros is None and m._sz is None for m in first._originals)
    unfuse_projections(model)
    # int8dq quantizes the activations per tensor: one tensor for q|k|v is the same tensor
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_logits(model, inputs), ref, rtol=0, atol=0)


@pytest.mark.slow  # inductor compiles the decode step on the CPU
def test_compiled_step_with_fused_projections_is_one_graph_and_decodes_the_eager_tokens():
    from studies.graph_breaks import explain_step
    from vlmslim.benchmarks.engine import CompiledDecoder
    from vlmslim.loading import load_model

    model, processor = load_model("demo")
    model.eval()
    inputs = synthetic_inputs(model, 1, 8, 0)
    dec = CompiledDecoder(model, 1, inputs["input_ids"].shape[1] + 8, compile=False)
    eager = dec.decode(inputs, 6, ignore_eos=True).tokens
    with fused_projections(model):
        row = explain_step(model, processor, "cpu")
        assert (row["graphs"], row["graph_breaks"]) == (1, 0), row["break_reasons"]
        torch._dynamo.reset()
        compiled = CompiledDecoder(model, 1, inputs["input_ids"].shape[1] + 8)
        for _ in range(2):  # the second call replays what the first compiled
            assert torch.equal(compiled.decode(inputs, 6, ignore_eos=True).tokens, eager)
    torch._dynamo.reset()


def test_bitsandbytes_layers_are_refused_before_anything_changes():
    model, _ = load_quantized("demo", "nf4")
    before = [type(m).__name__ for m in model.modules()]
    with pytest.raises(ValueError, match="Linear4bit layers cannot be fused"):
        fuse_projections(model)
    assert [type(m).__name__ for m in model.modules()] == before


def test_architecture_measurement_of_a_fused_model_counts_the_same_bytes():
    """The GPU study measures fused variants through `random_weights.measure`: the bandwidth floor (weights
    + K/V read per step, sized from k_proj's rows) and the measured bytes must not change with fusion."""
    from vlmslim.benchmarks import random_weights as arch
    from vlmslim.loading import load_model

    model, _ = load_model("demo")
    model.eval()
    cfg = arch.ArchBenchConfig("llava-1.5-7b", out="-", max_new_tokens=6, engines=("eager",), repeats=1)
    family = get_family(model)
    kv = arch.kv_bytes_per_step(model, family, 1, 100)
    # per layer: K and V, demo's k_proj rows, 100 positions, 2 bytes
    k_rows = family.decoder_layers(model)[0].get_submodule(f"{family.attn}.{family.k_proj}").out_features
    assert kv == len(family.decoder_layers(model)) * 2 * k_rows * 100 * 2
    (plain,) = arch.measure(model, cfg, bandwidth_gb_s=1.0)
    with fused_projections(model):
        assert arch.kv_bytes_per_step(model, family, 1, 100) == kv
        (fused,) = arch.measure(model, cfg, bandwidth_gb_s=1.0)
    for key in ("decode_weight_mb", "weight_mb", "params", "decode_floor_ms_per_token"):
        assert fused[key] == plain[key], key


def test_fused_layers_keep_no_activations_after_a_forward():
    """Each group's handoff holds its rows only until the last sibling takes them: a prefill's outputs must
    not stay alive per layer (on an H100 they did: +1.3 GB peak at 592 tokens)."""
    import gc
    import weakref

    from vlmslim.loading import load_model

    model, _ = load_model("demo")
    model.eval()
    inputs = synthetic_inputs(model, 2, 6, 0)
    with fused_projections(model):
        fused = [m for m in model.modules() if isinstance(m, FusedProjection)]
        outputs = []
        hooks = [m.register_forward_hook(lambda mod, args, out: outputs.append(weakref.ref(out))) for m in fused]
        _logits(model, inputs)
        for h in hooks:
            h.remove()
        gc.collect()
        assert len(outputs) == len(fused) == 2 * len(get_family(model).decoder_layers(model))
        assert all(m.handoff.parts == () for m in fused)
        assert all(ref() is None for ref in outputs)  # the (B, T, N) products are gone
