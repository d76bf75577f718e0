"""int4 weight-only on ATen tinygemm (vlmslim.int4): the kernel computes the dequantised product, the
checkpoint reloads exactly through load_model, stock from_pretrained refuses it, bytes are analytic."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from vlmslim.census import census, linear_layers
from vlmslim.cli import cli
from vlmslim.checkpoint import reference_logits
from vlmslim.errors import QuantizationError
from vlmslim.int4 import DEFAULT_KERNEL, Int4WeightOnlyLinear, pack, quantize_weight, unpack
from vlmslim.loading import load_model
from vlmslim.quantization import QuantSpec, make_recipe, quantize, quantize_model
from vlmslim.testing import tiny_model


def test_codes_round_trip_and_kernel_equals_dequantised_product():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96)
    codes, scale, zero = quantize_weight(lin.weight, 64)
    assert codes.max() <= 15 and torch.equal(unpack(pack(codes)), codes)
    # min-max per group: within half a step of the original, plus the bf16 rounding of the stored
    # scale and zero (< 2^-8 relative: at most ~0.1 step more)
    m = Int4WeightOnlyLinear.from_linear(lin, 64)
    step = scale.repeat_interleave(64, dim=1)
    err = (m.dequantized() - lin.weight.detach()).abs()
    assert (err <= 0.6 * step).all() and (err <= step / 2 + 1e-6).float().mean() > 0.9
    x = torch.randn(5, 7, 256)
    ref = x @ m.dequantized().t() + lin.bias.detach()
    y = m(x)
    assert y.shape == (5, 7, 96) and y.dtype == x.dtype
    assert ((y - ref).norm() / ref.norm()).item() < 1e-2  # bf16 activations
    big = torch.randn(40, 256)  # more rows than GEMV_MAX_ROWS: the dequantised-GEMM path (prefill)
    ref_big = big @ m.dequantized().t() + lin.bias.detach()
    assert ((m(big) - ref_big).norm() / ref_big.norm()).item() < 1e-2
    assert sorted(m.state_dict()) == ["bias", "scales", "weight", "zeros"]
    assert m.weight.dtype == torch.uint8 and m.weight.shape == (96, 128)  # two codes per byte


def test_kernel_choice_and_gemlite_layout():
    """`set_kernel` names its choices; gemlite's HQQ form (q - z) * scale is our dequantised weight; gemlite is
    CUDA-only, so here the choice fails in one line before anything changes (the GPU study runs it)."""
    torch.manual_seed(0)
    m = Int4WeightOnlyLinear.from_linear(torch.nn.Linear(256, 96), 64)
    with pytest.raises(ValueError, match="unknown int4wo kernel 'marlin'; choose one of auto, tinygemm, triton, gemlite, cuda"):
        m.set_kernel("marlin")
    codes, scales, z = m.gemlite_meta()
    assert codes.shape == (96, 256) and scales.shape == z.shape == (96, 4)
    hqq = (codes.float().view(96, 4, 64) - z[..., None]) * scales.float()[..., None]
    torch.testing.assert_close(hqq.view(96, 256), m.dequantized(), rtol=0, atol=1e-5)
    x = torch.randn(3, 256)
    before = m(x)
    with pytest.raises(RuntimeError, match="int4wo kernel 'gemlite' runs on CUDA GPUs only"):
        m.set_kernel("gemlite")
    assert m.kernel == DEFAULT_KERNEL and torch.equal(m(x), before) and sorted(m.state_dict()) == ["bias", "scales", "weight", "zeros"]


def test_split_k_layout_computes_the_same_product():
    """K split S ways: the column blocks stacked as rows, the diagonal blocks of the S-row product summed. Same
    product as the plain layout (to the bf16 rounding of each block's partial sum), same saved tensors, and
    a split that leaves part-groups or part k-tiles is refused in one line before anything changes."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(1024, 96)
    m = Int4WeightOnlyLinear.from_linear(lin, 128)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    for rows in (1, 3, 8):
        x = torch.randn(rows, 1024)
        ref = x @ m.dequantized().t() + lin.bias.detach()
        plain = m(x)
        for split in (2, 4):
            m.set_k_split(split)
            assert m._packed is not None and m.k_split == split
            y = m(x)
            assert y.shape == (rows, 96)
            assert ((y - ref).norm() / ref.norm()).item() < 1e-2
            assert ((y - plain).norm() / plain.norm()).item() < 5e-3  # only the partial sums' rounding differs
            m.set_k_split(1)
        assert torch.equal(m(x), plain)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in state.items())  # a layout: nothing saved changes
    narrow = Int4WeightOnlyLinear.from_linear(torch.nn.Linear(384, 32), 128)
    with pytest.raises(ValueError, match="k_split 2 needs in_features/2 to be a multiple of the group size 128 "
                                         "and of 128; in_features is 384"):
        narrow.set_k_split(2)
    with pytest.raises(ValueError, match="k_split must be one of 1, 2, 4, got 3"):
        m.set_k_split(3)
    assert narrow.k_split == 1 and m.k_split == 1


def test_demo_int4wo_reloads_exactly_and_stock_loading_refuses(tmp_path):
    out = tmp_path / "q"
    record = quantize("demo", out, QuantSpec(make_recipe("int4wo", group_size=64), "language"))
    assert record["reload_max_abs_diff"] == 0.0
    assert record["measured_bytes"]["payload"] == record["expected_bytes"]["total"]
    assert record["sqnr_db"] > 20
    model, proc = load_model(out)
    c = census(model)["components"]
    assert c["language"]["linear"] == {"int4wo": 28} and c["vision"]["linear"].get("int4wo") is None
    fp, _ = load_model("demo")
    assert c["language"]["params"] == census(fp)["components"]["language"]["params"]  # the weights it stands for
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "vlmslim-int4wo"
    from transformers import LlavaForConditionalGeneration

    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # never silently random weights
        LlavaForConditionalGeneration.from_pretrained(out)
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_model(model, "int4wo")
    assert torch.isfinite(reference_logits(model, proc)).all()


def test_cli_recipe_option_and_refusals(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["quantize", "demo", "--out", str(tmp_path / "a"), "--recipe", "int4wo", "--bits", "4"])
    assert res.exit_code == 2 and "exactly one of --recipe" in res.output
    res = runner.invoke(cli, ["quantize", "demo", "--out", str(tmp_path / "b"), "--recipe", "nf4", "--group-size", "64"])
    assert res.exit_code == 1 and "--group-size applies to --recipe int4wo only" in res.output
    res = runner.invoke(cli, ["quantize", "demo", "--out", str(tmp_path / "c"), "--recipe", "int4wo",
                              "--double-quant"])
    assert res.exit_code == 1 and "not int4wo" in res.output
    res = runner.invoke(cli, ["quantize", "demo", "--out", str(tmp_path / "d"), "--recipe", "int4wo",
                              "--group-size", "100"])
    assert res.exit_code == 1 and "group_size (--group-size) must be one of" in res.output
    assert not any(tmp_path.iterdir())


def test_odd_widths_are_named_with_the_fix():
    model, _ = tiny_model("llava")  # hidden 64: in_features 64 is not a multiple of group size 128
    with pytest.raises(QuantizationError, match="--round-to"):
        quantize_model(model, QuantSpec(make_recipe("int4wo", group_size=128)))
    assert not any(k == "int4wo" for k in linear_layers(model).values())


def test_fp16_models_get_the_bf16_hint(caplog):
    """tinygemm computes in bf16: an fp16 model casts around every int4 product (measured slower on an H100),
    so quantizing one says how to avoid it; a bf16 model is not told anything."""
    recipe = make_recipe("int4wo")
    with caplog.at_level("INFO", logger="vlmslim.quantization.recipes"):
        assert recipe.resolved(torch.bfloat16) is recipe
        assert not caplog.records
        assert recipe.resolved(torch.float16) is recipe
    (record,) = caplog.records
    assert "int4wo computes in bf16" in record.getMessage() and "--dtype bfloat16" in record.getMessage()
