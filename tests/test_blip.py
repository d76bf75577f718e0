"""The `blip` family (BlipForConditionalGeneration, seed 003): family facts on the tiny offline BLIP, the
caption prompt (a text prefix, no instruction), bench and int8 quantization through the CLI, pruning
refusals, and the shipped BLIP-base architecture config."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from click.testing import CliRunner

from test_bench import _stub_metrics, make_dataset
from vlmslim.census import census
from vlmslim.checkpoint import save_checkpoint
from vlmslim.cli import cli
from vlmslim.errors import PruningError, UnsupportedFamilyError
from vlmslim.families import get_family
from vlmslim.inputs import processor_inputs, synthetic_inputs
from vlmslim.manifest import new_manifest
from vlmslim.prompts import CAPTION_PROMPT, VQA_PROMPT
from vlmslim.pruning import PruneConfig
from vlmslim.pruning.prune import check_request
from vlmslim.testing import tiny_model


@pytest.fixture(scope="module")
def blip():
    return tiny_model("blip")


@pytest.fixture(scope="module")
def ckpt(blip, tmp_path_factory):
    model, processor = blip
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("m") / "tiny-blip",
                           new_manifest("tiny-blip", model.config))


def test_family_paths_and_census(blip):
    model, _ = blip
    family = get_family(model)
    assert family.model_type == "blip" and not family.has_glu and not family.image_in_text
    layers = family.decoder_layers(model)
    assert len(layers) == 2
    attn = layers[0].get_submodule(family.attn)
    for name in (family.q_proj, family.k_proj, family.v_proj, family.o_proj):
        assert isinstance(attn.get_submodule(name), torch.nn.Linear), name
    c = census(model)["components"]
    # vision 2 x (qkv, projection, fc1, fc2); decoder 2 x (self q/k/v/dense, cross q/k/v/dense, intermediate,
    # output); head: transform.dense + decoder (its weight tied to word_embeddings, counted in language)
    assert {k: v["linear"] for k, v in c.items() if v["linear"]} == {
        "vision": {"fp32": 8}, "language": {"fp32": 20}, "lm_head": {"fp32": 2}}
    assert c["projector"]["params"] == 0 and "other" not in c  # every parameter has a component
    assert c["lm_head"]["params"] == 64 * 64 + 64 + 2 * 64 + model.config.text_config.vocab_size  # dense, LN, bias


def test_caption_prompt_is_a_prefix_and_generate_echo_is_known(blip):
    model, processor = blip
    family = get_family(model)
    assert family.build_prompt(processor, CAPTION_PROMPT) == "a picture of"
    with pytest.raises(UnsupportedFamilyError, match="takes no instruction"):
        family.build_prompt(processor, VQA_PROMPT)
    inputs = processor_inputs(model, processor, [torch.zeros(3, 40, 40).numpy().transpose(1, 2, 0) + 0.5],
                              [CAPTION_PROMPT])
    ids = inputs["input_ids"]
    tok = processor.tokenizer
    assert tok.convert_ids_to_tokens(ids[0].tolist()) == ["[CLS]", "a", "picture", "of", "[SEP]"]
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    echoed = family.echoed_prompt(ids, model.config)
    # BLIP's generate: [CLS] -> [DEC] (bos), [SEP] dropped, then exactly the new tokens
    assert out.shape[1] == echoed.shape[1] + 3 and torch.equal(out[:, :echoed.shape[1]], echoed)
    assert echoed[0, 0] == tok.convert_tokens_to_ids("[DEC]")
    assert family.stop_token_ids(model.config) == {tok.sep_token_id}
    assert family.generate_kwargs(0) == {}  # BLIP's generate passes pad/eos itself


def test_synthetic_inputs_forward(blip):
    model, _ = blip
    inputs = synthetic_inputs(model, batch_size=2, prompt_len=6)
    assert inputs["pixel_values"].shape == (2, 3, 32, 32) and inputs["input_ids"].shape == (2, 6)
    assert (inputs["input_ids"][:, 0] == model.config.text_config.bos_token_id).all()
    with torch.no_grad():
        assert model(**inputs).logits.shape == (2, 6, model.config.text_config.vocab_size)


@pytest.mark.parametrize("kwargs, message", [
    (dict(glu=0.5), "--glu: blip has no GLU MLP"),
    (dict(heads=0.5), "--heads: not supported for blip: BLIP's text self-attention keeps its width"),
])
def test_pruning_refusals_are_clear(blip, kwargs, message):
    with pytest.raises(PruningError, match=message):
        check_request(blip[0], PruneConfig(**kwargs))


def test_cli_prune_heads_refused_nothing_written(ckpt, tmp_path):
    r = CliRunner().invoke(cli, ["prune", str(ckpt), "--out", str(tmp_path / "o"), "--heads", "0.25"])
    assert r.exit_code != 0 and "not supported for blip" in r.output and not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def int8_ckpt(ckpt, tmp_path_factory):
    q = tmp_path_factory.mktemp("q") / "blip-int8"
    r = CliRunner().invoke(cli, ["quantize", str(ckpt), "--out", str(q), "--recipe", "int8"])
    assert r.exit_code == 0, r.output
    return q


def test_cli_quantize_int8_targets_the_text_decoder(int8_ckpt):
    """int8 on the text decoder only (vision tower and head stay fp32), reloaded with identical logits."""
    manifest = json.loads((int8_ckpt / "vlmslim.json").read_text())
    assert {c: v["linear"] for c, v in manifest["census"]["components"].items() if v["linear"]} == {
        "vision": {"fp32": 8}, "language": {"int8": 20}, "lm_head": {"fp32": 2}}
    record = manifest["quantization"]
    assert record["reload_max_abs_diff"] == 0.0 and record["sqnr_db"] > 30
    skip = json.loads((int8_ckpt / "config.json").read_text())["quantization_config"]["llm_int8_skip_modules"]
    assert skip == ["vision_model", "text_decoder.cls"]


def test_cli_bench_captions_with_quantized_blip(int8_ckpt, tmp_path, monkeypatch):
    """`vlmslim bench` on the int8 BLIP (stub metrics: the plumbing, not BLIP's quality)."""
    import vlmslim.benchmarks.metrics  # noqa: F401  (its submodules stay importable under the stub)

    stub = _stub_metrics()  # as test_bench's stub_scores: METEOR's JVM would take seconds per run
    monkeypatch.setitem(sys.modules, "vlmslim.benchmarks.metrics", stub)
    monkeypatch.setattr(vlmslim.benchmarks, "metrics", stub, raising=False)
    out = tmp_path / "res"
    r = CliRunner().invoke(cli, ["bench", str(int8_ckpt), "--data", make_dataset(tmp_path / "data", n=3), "--out",
                                 str(out), "--max-new-tokens", "5", "--bootstrap", "10", "--no-energy", "--warmup",
                                 "1", "--no-bertscore"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["model"]["family"] == "blip" and s["n_samples"] == 3 and s["model"]["precision"] == "int8"
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    # the prefix is the prompt, not part of the answer; at most 5 new tokens (generation stops at [SEP])
    assert all(0 < row["tokens"] <= 5 for row in rows), rows
    assert not any(row["prediction"].startswith("a picture of") for row in rows)


def test_drop_layers_works_where_heads_do_not(ckpt, tmp_path):
    """The refusals point at --drop-layers: it must work (layer 0 dropped: the kept layer's cache index moves)."""
    from vlmslim.inputs import fixed_inputs
    from vlmslim.loading import load_model

    r = CliRunner().invoke(cli, ["prune", str(ckpt), "--out", str(tmp_path / "o"), "--drop-layers", "0,"])
    assert r.exit_code == 0, r.output
    model, processor = load_model(tmp_path / "o")
    assert len(get_family(model).decoder_layers(model)) == 1
    out = model.generate(**fixed_inputs(model, processor), max_new_tokens=4, min_new_tokens=4)
    assert out.shape[1] == 4 + 4  # [DEC] a picture of + 4 new tokens


def test_cpu_study_runs_on_the_tiny_config(blip, tmp_path, monkeypatch):
    from studies import blip_cpu

    config = tmp_path / "tiny-blip.json"
    config.write_text(json.dumps(blip[0].config.to_dict()))
    out = tmp_path / "r.json"
    # 1 thread: with 2 threads on 2 busy cores the tiny study took ~75 s (OpenMP threads wait for each other)
    monkeypatch.setattr(sys, "argv", ["blip_cpu", "--out", str(out), "--config", str(config), "--threads", "1",
                                      "--new-tokens", "4"])
    blip_cpu.main()
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"fp32", "quantize_dynamic", "int8dq (all)", "int8dq (language)", "bnb int8 (all)"}
    assert rows["fp32"]["speedup_vs_fp32"] == 1.0 and all(len(r["latency_s_runs"]) == 5 for r in rows.values())
    assert all(r["bytes"] < rows["fp32"]["bytes"] for n, r in rows.items() if n != "fp32")
    assert result["torch_threads"] == 1 and result["versions"]["torch"]


def test_inspect_blip_base_counts_the_tied_head_once():
    r = CliRunner().invoke(cli, ["inspect", "random:blip-image-captioning-base"])
    assert r.exit_code == 0, r.output
    assert "223,971,644" in r.output and "text_decoder.cls.predictions.decoder.weight" in r.output


def test_random_weights_bench_runs_blip(blip, tmp_path):
    config = tmp_path / "tiny-blip.json"
    config.write_text(json.dumps(blip[0].config.to_dict()))
    r = CliRunner().invoke(cli, ["bench", str(config), "--random-weights", "--out", str(tmp_path / "arch"), "--device",
                                 "cpu", "--dtype", "float32", "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "arch" / "summary.json").read_text())
    assert s["engines"][0]["new_tokens"] == 4 and s["efficiency"]["decode_ms_per_token"] > 0
