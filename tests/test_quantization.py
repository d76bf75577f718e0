"""Quantization step (issue 5): recipes × targets on tiny LLaVA and Idefics3, census exactness, reload,
SQNR, bytes vs the analytic expectation, pruned inputs, bad widths, CLI errors.

SQNR thresholds were measured on these tiny random models (fixed input, logits vs the fp32 model) and set
with margin; the lowest measured values were int8 35.7, nf4 15.2, fp4 10.4, nf4+double-quant 15.2 dB
(LLaVA, target all).
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from click.testing import CliRunner

from vlmslim.census import linear_layers
from vlmslim.checkpoint import reference_logits, save_checkpoint
from vlmslim.loading import load_model
from vlmslim.manifest import new_manifest
from vlmslim.cli import cli
from vlmslim.errors import QuantizationError
from vlmslim.quantization import (QuantSpec, expected_bytes, load_quantized, make_recipe, quantize, quantize_model,
                                  recipe_from_bits, resolve_target, sqnr_db)
from vlmslim.loading.quantized import rebuild_quantized
from vlmslim.quantization.targets import TARGETS
from vlmslim.testing import tiny_llava, tiny_model

# Linear layers per component of the tiny models, counted by hand from vlmslim.testing:
# vision 2 layers × (q, k, v, out, fc1, fc2); language 2 layers × (q, k, v, o, gate, up, down).
LINEARS = {
    "llava": {"vision": 12, "projector": 2, "language": 14, "lm_head": 1},  # projector linear_1, linear_2
    "idefics3": {"vision": 12, "projector": 1, "language": 14, "lm_head": 1},  # connector.modality_projection
}
RECIPES = {
    "int8": dict(name="int8"),
    "nf4": dict(name="nf4"),
    "fp4": dict(name="fp4"),
    "nf4-dq": dict(name="nf4", double_quant=True),
}
KIND = {"int8": "int8", "nf4": "nf4", "fp4": "fp4", "nf4-dq": "nf4"}
SQNR_MIN_DB = {"int8": 30.0, "nf4": 12.0, "fp4": 8.0, "nf4-dq": 12.0}


def _recipe(key):
    opts = dict(RECIPES[key])
    return make_recipe(opts.pop("name"), **opts)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Unquantized tiny checkpoints (fp32) saved once per module: {family: path}."""
    root = tmp_path_factory.mktemp("src")
    out = {}
    for family in LINEARS:
        model, processor = tiny_model(family)
        out[family] = save_checkpoint(model, processor, root / family, new_manifest(f"tiny-{family}", model.config))
    return out


@pytest.fixture(scope="module")
def quantized_llava(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "llava-nf4dq"
    quantize(sources["llava"], out, QuantSpec(_recipe("nf4-dq"), target="all"))
    return out


# ---------------------------------------------------------------- recipes


def test_recipes_validate_and_map_bits(caplog):
    with caplog.at_level(logging.INFO, logger="vlmslim.quantization.recipes"):
        r = recipe_from_bits(4)
    assert (r.name, r.double_quant) == ("nf4", False)
    assert "using nf4" in caplog.text  # bits 4 without --quant-type says what it picked
    assert recipe_from_bits(8).int8_threshold == 6.0
    assert recipe_from_bits(8, int8_threshold=0).int8_threshold == 0
    assert recipe_from_bits(4, "fp4", True, "bfloat16").params()["compute_dtype"] == "bfloat16"
    for kwargs, option in [(dict(bits=3), "--bits"), (dict(bits=8, quant_type="nf4"), "--quant-type"),
                           (dict(bits=8, double_quant=True), "--double-quant"),
                           (dict(bits=8, compute_dtype="float16"), "--compute-dtype"),
                           (dict(bits=4, int8_threshold=6.0), "--int8-threshold"),
                           (dict(bits=4, quant_type="int4"), "--quant-type"),
                           (dict(bits=4, compute_dtype="float64"), "--compute-dtype"),
                           (dict(bits=8, int8_threshold=-1.0), "--int8-threshold")]:
        with pytest.raises(ValueError, match=option):
            recipe_from_bits(**kwargs)
    with pytest.raises(ValueError, match="double_quant"):
        make_recipe("int8", double_quant=True)  # seed 004: 4-bit keys in an 8-bit config
    with pytest.raises(ValueError, match="unknown"):
        make_recipe("int3")


# ---------------------------------------------------------------- targets


def test_targets_resolve_to_exact_component_layers():
    model, _ = tiny_model("llava")
    names = linear_layers(model)
    for target, comps in TARGETS.items():
        t = resolve_target(model, target)
        want = [n for n in names if any(n.startswith(p + ".") for c in comps
                                        for p in {"vision": ["model.vision_tower"], "projector":
                                                  ["model.multi_modal_projector"], "language":
                                                  ["model.language_model"], "other": []}[c])]
        assert list(t.quantize) == want
        assert "lm_head" not in t.quantize and "lm_head" in t.skip_modules
    assert resolve_target(model, "language").skip_modules == (
        "model.vision_tower", "model.multi_modal_projector", "lm_head")

    t = resolve_target(model, "language", keep=["model.language_model.layers.0.mlp", "*.self_attn.o_proj"],
                       also=["lm_head"])
    assert len(t.quantize) == 14 - 3 - 2 + 1 and "lm_head" in t.quantize
    assert "model.language_model.layers.0.mlp" in t.skip_modules  # whole module skipped, not its 3 Linears
    assert "model.language_model.layers.1.self_attn.o_proj" in t.skip_modules


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep=["model.language_model.layers.7"]), "--keep 'model.language_model.layers.7' matches no"),
    (dict(keep=["model.vision_tower"]), "leaves unquantized"),
    (dict(also=["model.language_model.layers.0"]), "quantizes already"),
])
def test_target_exceptions_that_match_nothing_fail(kwargs, message):
    model, _ = tiny_model("llava")
    with pytest.raises(QuantizationError, match=message):
        resolve_target(model, "language", **kwargs)


def test_also_refuses_tied_lm_head():
    model, _ = tiny_model("paligemma")  # Gemma ties lm_head to the input embeddings
    with pytest.raises(QuantizationError, match="tied"):
        resolve_target(model, "all", also=["lm_head"])


def test_transformers5_skip_semantics(sources):
    """The DESIGN.md facts this module relies on, checked against the installed transformers: a short
    name matches nothing, a user list replaces the default (lm_head gets quantized), full dotted names
    work — and our skip list makes stock quantize-at-load pick exactly our target."""
    from transformers import BitsAndBytesConfig, LlavaForConditionalGeneration

    def stock(skip, recipe=_recipe("nf4")):
        cfg = recipe.resolved(torch.float32).bnb_config(skip) if skip is not None else BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4")
        return linear_layers(LlavaForConditionalGeneration.from_pretrained(
            sources["llava"], quantization_config=cfg, device_map={"": "cpu"}))

    short = stock(["vision_tower"])
    assert short["model.vision_tower.encoder.layers.0.mlp.fc1"] == "nf4" and short["lm_head"] == "nf4"
    assert stock(["model.vision_tower"])["model.vision_tower.encoder.layers.0.mlp.fc1"] == "fp32"
    model, _ = load_model(sources["llava"])
    target = resolve_target(model, "language", keep=["*.mlp.down_proj"])
    quantize_model(model, QuantSpec(_recipe("nf4"), "language", keep=["*.mlp.down_proj"]))
    assert stock(list(target.skip_modules)) == linear_layers(model)


# ---------------------------------------------------------------- the step, recipe × target × family


@pytest.mark.parametrize("family", sorted(LINEARS))
@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_quantize_matrix(sources, tmp_path, family, recipe, target):
    out = tmp_path / "q"
    record = quantize(sources[family], out, QuantSpec(_recipe(recipe), target=target))
    manifest = json.loads((out / "vlmslim.json").read_text())
    # census: exactly the target's Linears in the recipe's kind, everything else (lm_head always) fp32
    comps = TARGETS[target]
    want = {c: {KIND[recipe] if c in comps else "fp32": n} for c, n in LINEARS[family].items()}
    assert {c: v["linear"] for c, v in manifest["census"]["components"].items()} == want
    assert manifest["steps"][-1]["kind"] == "quantize" and manifest["steps"][-1]["method"] == KIND[recipe]
    # reload (vlmslim.load_model, eval mode) reproduces the in-memory logits exactly on CPU
    assert record["reload_max_abs_diff"] == 0.0
    assert record["sqnr_db"] > SQNR_MIN_DB[recipe]
    # bytes: the analytic expectation is exact, except double-quant's float offset in a JSON blob
    slack = 3 * record["expected_bytes"]["quantized_layers"] if recipe == "nf4-dq" else 0
    assert abs(record["measured_bytes"]["payload"] - record["expected_bytes"]["total"]) <= slack
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert "lm_head" in config["llm_int8_skip_modules"]
    assert config["load_in_4bit"] == (recipe != "int8")


@pytest.mark.parametrize("family", sorted(LINEARS))
def test_sqnr_orders_recipes(sources, family):
    """int8 > nf4 > fp4 on every target: nf4's code book fits normally distributed weights better."""
    base, processor = tiny_model(family)
    ref = reference_logits(base, processor)
    for target in TARGETS:
        sq = {}
        for key in ("int8", "nf4", "fp4"):
            model = copy.deepcopy(base)
            quantize_model(model, QuantSpec(_recipe(key), target))
            sq[key] = sqnr_db(ref, reference_logits(model, processor))
        assert sq["int8"] > sq["nf4"] > sq["fp4"], (target, sq)


def test_stock_from_pretrained_and_rebuild_agree(sources, quantized_llava, tmp_path):
    """The saved checkpoint reloads with plain transformers, and vlmslim's rebuild path (for pruned shapes,
    which also renames LLaVA's legacy checkpoint keys) gives the same layers and logits."""
    from transformers import AutoModelForImageTextToText

    from vlmslim.loading import load_config, model_class
    from vlmslim.manifest import read_manifest

    for spec, path in [(None, quantized_llava),
                       (QuantSpec(_recipe("int8"), "all"), tmp_path / "int8")]:
        if spec is not None:
            quantize(sources["llava"], path, spec)
        model, processor = load_model(path)
        stock = AutoModelForImageTextToText.from_pretrained(path, device_map={"": "cpu"}).eval()
        config = load_config(str(path))
        rebuilt = rebuild_quantized(str(path), model_class(config), config, read_manifest(path)).eval()
        ref = reference_logits(model, processor)
        for other in (stock, rebuilt):
            assert linear_layers(other) == linear_layers(model)
            assert torch.equal(reference_logits(other, processor), ref)


def test_int8_threshold_is_saved_and_reloaded(sources, tmp_path):
    quantize(sources["idefics3"], tmp_path / "q", QuantSpec(make_recipe("int8", int8_threshold=0.0), "language"))
    model, _ = load_model(tmp_path / "q")
    layer = model.get_submodule("model.text_model.layers.0.mlp.up_proj")
    assert type(layer).__name__ == "Linear8bitLt" and layer.state.threshold == 0.0


# ---------------------------------------------------------------- pruned inputs


def test_pruned_stock_loadable_checkpoint(tmp_path):
    """Uniformly pruned widths (multiples of 64) are expressible in the stock config."""
    model, processor = tiny_llava(intermediate=192)
    manifest = new_manifest("tiny-llava", model.config)
    manifest["steps"].append({"kind": "prune", "method": "glu", "params": {"glu": 0.25, "round_to": 64}})
    src = save_checkpoint(model, processor, tmp_path / "pruned", manifest)
    record = quantize(src, tmp_path / "q", QuantSpec(_recipe("nf4"), "all"))
    saved = json.loads((tmp_path / "q" / "vlmslim.json").read_text())
    assert [s["kind"] for s in saved["steps"]] == ["prune", "quantize"]
    assert record["reload_max_abs_diff"] == 0.0 and record["sqnr_db"] > SQNR_MIN_DB["nf4"]


def test_pruned_non_stock_checkpoint_quantizes_and_reloads(tmp_path):
    from vlmslim.pruning import PruneConfig, prune_checkpoint

    model, processor = tiny_llava()
    base = save_checkpoint(model, processor, tmp_path / "base", new_manifest("tiny-llava", model.config))
    # One of 4 KV groups removed -> 6 of 8 query heads: LlamaConfig refuses hidden 64 % 6, so only
    # vlmslim.load_model rebuilds it.
    src, pruned = prune_checkpoint(base, tmp_path / "pruned", PruneConfig(heads=0.25, head_mode="groups"))
    assert pruned["stock_loadable"] is False
    # int8: q_proj now has 48 outputs, below the 4-bit kernels' multiple of 32 (int8 has no shape limit).
    record = quantize(src, tmp_path / "q", QuantSpec(_recipe("int8"), "language"))
    assert record["reload_max_abs_diff"] == 0.0
    reloaded, _ = load_model(tmp_path / "q")  # through rebuild_quantized: from_pretrained cannot
    assert reloaded.get_submodule("model.language_model.layers.1.self_attn.q_proj").out_features == 48
    assert linear_layers(reloaded)["model.language_model.layers.1.self_attn.q_proj"] == "int8"
    saved = json.loads((tmp_path / "q" / "vlmslim.json").read_text())
    assert [s["kind"] for s in saved["steps"]] == ["prune", "quantize"]


def test_bad_width_gives_clear_error():
    model, _ = tiny_llava(intermediate=200)  # gate/up 200x64, down 64x200: not multiples of 32/64
    with pytest.raises(QuantizationError) as err:
        quantize_model(model, QuantSpec(_recipe("nf4"), "language"))
    msg = str(err.value)
    assert "model.language_model.layers.0.mlp.gate_proj (200x64)" in msg and "--round-to 64" in msg
    assert "\n" not in msg
    quantize_model(model, QuantSpec(_recipe("int8"), "language"))  # int8 has no shape limit


# ---------------------------------------------------------------- quantize at load


def test_quantize_at_load_matches_the_step(sources, quantized_llava):
    before = sorted(p.name for p in sources["llava"].iterdir())
    model, processor = load_quantized(sources["llava"], QuantSpec(_recipe("nf4-dq"), "all"))
    assert sorted(p.name for p in sources["llava"].iterdir()) == before  # nothing written
    saved, _ = load_model(quantized_llava)
    assert linear_layers(model) == linear_layers(saved)
    assert torch.equal(reference_logits(model, processor), reference_logits(saved, processor))
    with pytest.raises(QuantizationError, match="already quantized"):
        load_quantized(quantized_llava, "nf4")
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_model(model, "int8")


def test_expected_bytes_works_on_meta_models():
    from accelerate import init_empty_weights

    model, _ = tiny_model("paligemma")  # tied lm_head: saved once
    with init_empty_weights():
        meta = type(model)._from_config(model.config)
    target = resolve_target(model, "vision")
    for recipe in (_recipe("int8"), _recipe("nf4-dq")):
        assert expected_bytes(meta, recipe, target) == expected_bytes(model, recipe, target)
    assert expected_bytes(model, None, ())["total"] == sum(p.numel() * 4 for p in model.parameters())


# ---------------------------------------------------------------- CLI


def test_cli_quantize(sources, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, ["quantize", str(sources["idefics3"]), "--out", str(out), "--bits", "4",
                                      "--keep", "*.mlp.down_proj"])
    assert result.exit_code == 0, result.output
    assert "nf4" in result.output and (out / "vlmslim.json").exists()
    census = json.loads((out / "vlmslim.json").read_text())["census"]["components"]
    assert census["language"]["linear"] == {"nf4": 12, "fp32": 2}


@pytest.mark.parametrize("args, message", [
    (["--bits", "3"], "'3' is not one of"),
    (["--bits", "8", "--quant-type", "nf4"], "--quant-type applies to 4-bit only"),
    (["--bits", "4", "--int8-threshold", "3"], "--int8-threshold applies to --bits 8 only"),
    (["--bits", "8", "--keep", "model.nothing"], "--keep 'model.nothing' matches no Linear layer"),
    ("QUANTIZED", "already quantized"),
    ("BADWIDTH", "--round-to 64"),
])
def test_cli_bad_inputs(sources, quantized_llava, tmp_path, args, message):
    src = sources["llava"]
    if args == "QUANTIZED":
        src, args = quantized_llava, ["--bits", "4"]
    elif args == "BADWIDTH":
        model, processor = tiny_llava(intermediate=200)
        src = save_checkpoint(model, processor, tmp_path / "bad", new_manifest("bad", model.config))
        args = ["--bits", "4"]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["quantize", str(src), "--out", str(out), *args])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback-worthy error
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]  # no output, no partial dir
