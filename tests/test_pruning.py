"""Pruning: importance scores, selection, surgery, reload guarantees, CLI refusals (tiny offline models)."""

import json

import pytest
import torch
from click.testing import CliRunner

from vlmslim.checkpoint import reference_logits, save_checkpoint
from vlmslim.loading import load_model
from vlmslim.manifest import new_manifest, read_manifest
from vlmslim.cli import cli
from vlmslim.errors import PruningError
from vlmslim.families import get_family
from vlmslim.inputs import fixed_inputs
from vlmslim.pruning import PruneConfig, prune, prune_checkpoint
from vlmslim.shapes import prune_glu
from vlmslim.pruning.importance import GLUWeights, maw, o_norm
from vlmslim.pruning.select import kept_heads, kept_width, select_heads
from vlmslim.testing import tiny_llava, tiny_model

# ---------------------------------------------------------------- helpers


def save_base(model, processor, path):
    save_checkpoint(model, processor, path, new_manifest("tiny", model.config))
    return path


def logits(model, processor):
    return reference_logits(model, processor)


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def lm_params(model):
    return sum(p.numel() for n, p in model.named_parameters() if get_family(model).component_of(n) == "language")


# ---------------------------------------------------------------- score + select (pure)


def test_maw_matches_hand_computed_example():
    gate = torch.tensor([[1.0, -2.0, 0.5], [0.1, 0.2, 0.3]])  # (I=2, hidden=3)
    up = torch.tensor([[0.0, 3.0, -1.0], [-0.5, -0.5, -0.5]])
    scores = maw(GLUWeights(gate=gate, up=up, down=torch.zeros(3, 2)))
    # neuron 0: (1 + |-2|) + (3 + |-1|) = 7 ; neuron 1: (0.3 + 0.1) + (-0.5 + 0.5) = 0.4
    assert torch.allclose(scores, torch.tensor([7.0, 0.4]))
    o = torch.arange(12.0).view(2, 6)  # (hidden=2, 3 heads x head_dim 2)
    assert torch.allclose(o_norm(o, 2), torch.tensor([0 + 1 + 36 + 49, 4 + 9 + 64 + 81, 16 + 25 + 100 + 121.0]).sqrt())


def test_widths_round_to_and_refusals_list_possible_ratios():
    assert kept_width(256, 0.5, 64) == 128
    assert kept_width(11008, 0.3, 64) == 7680
    assert kept_width(256, 0.0, 64) == 256
    with pytest.raises(PruningError, match=r"removes no neurons.*possible ratios: 0.25, 0.5, 0.75"):
        kept_width(256, 0.1, 64)
    with pytest.raises(PruningError, match="keeps no neurons"):
        kept_width(256, 0.9, 64)
    assert kept_heads(8, 4, 0.5, "groups") == (4, 2)
    assert kept_heads(8, 4, 0.5, "query") == (4, 4)
    assert kept_heads(32, 32, 0.25, "groups") == (24, 24)
    with pytest.raises(PruningError, match="possible ratios: 0.25, 0.5, 0.75"):
        kept_heads(8, 4, 0.1, "groups")
    with pytest.raises(PruningError, match="use --head-mode groups"):
        kept_heads(32, 32, 0.25, "query")


def test_select_heads_keeps_gqa_groups_consistent():
    scores = torch.tensor([5.0, 4.0, 0.1, 0.2, 3.0, 0.5, 1.0, 9.0])  # 8 query heads, 4 KV groups of 2
    q, kv = select_heads(scores, 4, 0.5, "groups")  # group sums 9, 0.3, 3.5, 10 -> groups 0, 3
    assert kv.tolist() == [0, 3] and q.tolist() == [0, 1, 6, 7]
    q, kv = select_heads(scores, 4, 0.5, "query")  # best head of every group
    assert kv.tolist() == [0, 1, 2, 3] and q.tolist() == [0, 3, 4, 7]


def test_prune_config_validates_and_names_the_option():
    for bad, opt in [(dict(glu=1.0), "--glu"), (dict(heads=-0.1), "--heads"), (dict(importance="nope"), "--importance"),
                     (dict(head_mode="x"), "--head-mode"), (dict(round_to=0), "--round-to")]:
        with pytest.raises(ValueError, match=opt):
            PruneConfig(**bad)
    assert PruneConfig(glu=0.3, importance="activation").needs_calibration
    assert not PruneConfig(glu=0.3).needs_calibration


# ---------------------------------------------------------------- surgery on tiny models


def test_ratio_zero_leaves_logits_identical(llava):
    model, proc = llava
    before = logits(model, proc)
    model, step = prune(model, proc, PruneConfig(glu=0.0, heads=0.0))
    assert torch.equal(logits(model, proc), before)
    assert step["params_after"] == step["params_before"] and step["stock_loadable"]


def test_glu_all_neurons_kept_in_another_order_is_exact(llava):
    model, proc = llava
    before = logits(model, proc)
    family = get_family(model)
    for layer in family.decoder_layers(model):
        prune_glu(family, layer.mlp, torch.randperm(256, generator=torch.Generator().manual_seed(1)))
    assert torch.allclose(logits(model, proc), before, rtol=0, atol=1e-5)
    # permuting gate rows without up/down breaks the model: the check above can fail
    layer = family.decoder_layers(model)[0]
    layer.mlp.gate_proj.weight.data = layer.mlp.gate_proj.weight.data.flip(0)
    assert (logits(model, proc) - before).abs().max() > 1e-3


@pytest.mark.parametrize("family,cfg,expect", [
    # LLaVA: hidden 64, 8 q / 4 KV heads, head_dim 8, I=256, 2 layers
    ("llava", dict(glu=0.5, heads=0.5), dict(I=128, q=4, kv=2, stock=True)),
    ("llava", dict(glu=0.25, heads=0.5, head_mode="query"), dict(I=192, q=4, kv=4, stock=True)),
    # PaliGemma (Gemma GeGLU): hidden 64, 4 q / 1 KV head, head_dim 16, I=256
    ("paligemma", dict(glu=0.75, heads=0.5, head_mode="query"), dict(I=64, q=2, kv=1, stock=True)),
    # Idefics3: 4 q / 2 KV heads, head_dim 16; 2 of 4 heads with hidden 64 is admissible
    ("idefics3", dict(glu=0.5, heads=0.5), dict(I=128, q=2, kv=1, stock=True)),
])
def test_param_count_matches_formula_and_reload(tmp_path, family, cfg, expect):
    model, proc = tiny_model(family)
    tc = get_family(model).get_text_config(model.config)
    h, hd, L = tc.hidden_size, tc.head_dim, tc.num_hidden_layers
    q0, kv0, i0 = tc.num_attention_heads, tc.num_key_value_heads, tc.intermediate_size
    before = lm_params(model)
    src = save_base(model, proc, tmp_path / "base")
    out, manifest = prune_checkpoint(src, tmp_path / "out", PruneConfig(**cfg))
    reloaded, _ = load_model(out)
    removed_mlp = 3 * h * (i0 - expect["I"])  # gate, up: rows; down: columns
    removed_attn = h * hd * (2 * (q0 - expect["q"]) + 2 * (kv0 - expect["kv"]))  # q + o, k + v
    assert lm_params(reloaded) == before - L * (removed_mlp + removed_attn)
    step = manifest["steps"][-1]
    assert step["params_after"]["language"] == lm_params(reloaded)
    assert step["stock_loadable"] is expect["stock"] and manifest["stock_loadable"] is expect["stock"]
    assert step["reload_max_abs_diff"] == 0.0
    assert manifest["architecture"]["text_layers"][0] == {
        "intermediate_size": expect["I"], "num_attention_heads": expect["q"], "num_key_value_heads": expect["kv"],
        "head_dim": hd}
    saved = json.loads((out / "config.json").read_text())["text_config"]
    assert saved["intermediate_size"] == expect["I"] and saved["num_attention_heads"] == expect["q"]
    assert set(json.loads((out / "config.json").read_text())) == set(json.loads((src / "config.json").read_text()))


def test_refused_head_count_reloads_through_load_model_only(tmp_path, llava):
    model, proc = llava
    src = save_base(model, proc, tmp_path / "base")
    # 3 of 4 KV groups -> 6 query heads: LlamaConfig refuses hidden 64 % 6
    out, manifest = prune_checkpoint(src, tmp_path / "out", PruneConfig(heads=0.25, glu=0.25))
    assert manifest["stock_loadable"] is False
    assert manifest["architecture"]["text_layers"][1]["num_attention_heads"] == 6
    assert json.loads((out / "config.json").read_text())["text_config"]["num_attention_heads"] == 8
    from transformers import LlavaForConditionalGeneration

    with pytest.raises((RuntimeError, ValueError), match="size"):
        LlavaForConditionalGeneration.from_pretrained(out)
    reloaded, rproc = load_model(out)
    assert type(reloaded) is LlavaForConditionalGeneration
    assert reloaded.model.language_model.layers[0].self_attn.num_key_value_groups == 2
    assert reloaded.model.language_model.layers[0].self_attn.k_proj.out_features == 3 * 8  # smaller KV cache
    inputs = fixed_inputs(reloaded, rproc)
    gen = reloaded.generate(**inputs, max_new_tokens=3, do_sample=False)  # KV cache path with 3 groups
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3
    # pruning the pruned checkpoint appends a step and stays consistent
    out2, manifest2 = prune_checkpoint(out, tmp_path / "out2", PruneConfig(heads=0.5, head_mode="query"))
    assert [s["kind"] for s in manifest2["steps"]] == ["prune", "prune"]
    assert manifest2["architecture"]["text_layers"][0]["num_attention_heads"] == 3
    assert manifest2["steps"][-1]["reload_max_abs_diff"] == 0.0


def test_pruning_changes_the_model_and_groups_differ_from_query(llava):
    model, proc = llava
    before = logits(model, proc)
    m1, s1 = prune(tiny_model("llava")[0], proc, PruneConfig(heads=0.5))
    m2, s2 = prune(tiny_model("llava")[0], proc, PruneConfig(heads=0.5, head_mode="query"))
    assert (logits(m1, proc) - before).abs().max() > 1e-4
    assert s1["kept"]["attention"][0]["kv_heads"] != s2["kept"]["attention"][0]["kv_heads"]


@pytest.mark.slow  # Qwen2.5-VL and BLIP-2 tiny models, prune + save + reload each
def test_qwen_and_opt_heads_with_biases_rebuild(tmp_path):
    for name, cfg in [("qwen2_5_vl", PruneConfig(glu=0.5, heads=0.5)), ("blip-2", PruneConfig(heads=0.5))]:
        model, proc = tiny_model(name)
        src = save_base(model, proc, tmp_path / f"{name}-base")
        # head_dim = hidden // heads in both: any head pruning needs the manifest to rebuild
        out, manifest = prune_checkpoint(src, tmp_path / f"{name}-out", cfg)
        assert manifest["stock_loadable"] is False and manifest["steps"][-1]["reload_max_abs_diff"] == 0.0


def test_activation_importance_differs_from_weights_on_crafted_model(llava, calib_dir):
    model, proc = llava
    # Neurons 0..127 of layer 0 read only hidden channel 5, which the MLP's RMSNorm zeroes: large weights
    # (maw keeps them), activation exactly 0 (activation criterion drops them).
    mlp = model.model.language_model.layers[0].mlp
    for lin in (mlp.gate_proj, mlp.up_proj):
        lin.weight.data[:128] = 0
        lin.weight.data[:128, 5] = 10.0
    model.model.language_model.layers[0].post_attention_layernorm.weight.data[5] = 0
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def kept(importance):
        m = tiny_model("llava")[0]
        m.load_state_dict(state)
        _, step = prune(m, proc, PruneConfig(glu=0.5, importance=importance, calibration=str(calib_dir)))
        return m.model.language_model.layers[0].mlp, step

    from vlmslim.pruning.prune import indices_sha256

    m_w, s_w = kept("maw")
    m_a, s_a = kept("activation")
    assert s_w["kept"]["mlp"][0]["sha256"] == indices_sha256(torch.arange(128))  # exactly the crafted ones
    assert s_a["kept"]["mlp"][0]["sha256"] == indices_sha256(torch.arange(128, 256))  # none of them
    assert s_a["calibration"]["n_samples"] == 4 and s_a["calibration"]["samples_sha256"]
    _, s_h = kept("hybrid")
    assert s_h["kept"]["mlp"][0]["sha256"] == indices_sha256(torch.arange(128, 256))


def test_drop_layers_by_similarity_removes_an_identity_layer(tmp_path, calib_dir):
    model, proc = tiny_llava(layers=3)
    layer = model.model.language_model.layers[1]
    layer.self_attn.o_proj.weight.data.zero_()  # residual branches write nothing: output == input
    layer.mlp.down_proj.weight.data.zero_()
    before = logits(model, proc)
    src = save_base(model, proc, tmp_path / "base")
    out, manifest = prune_checkpoint(src, tmp_path / "out",
                                     PruneConfig(drop_layers=1, calibration=str(calib_dir), calibration_samples=2))
    step = manifest["steps"][-1]
    assert step["dropped_layers"] == [1] and step["layer_similarity"][1] == pytest.approx(1.0)
    assert manifest["stock_loadable"]
    reloaded, rproc = load_model(out)
    assert reloaded.config.text_config.num_hidden_layers == 2
    assert torch.allclose(logits(reloaded, rproc), before, atol=1e-5)
    # an explicit list drops exactly those layers (and the output then changes)
    out2, m2 = prune_checkpoint(src, tmp_path / "out2", PruneConfig(drop_layers=(0, 2)))
    assert m2["steps"][-1]["dropped_layers"] == [0, 2] and len(m2["architecture"]["text_layers"]) == 1


def test_trim_vision_keeps_logits_identical_and_loads_stock(tmp_path, llava):
    model, proc = llava
    before = logits(model, proc)
    src = save_base(model, proc, tmp_path / "base")
    out, manifest = prune_checkpoint(src, tmp_path / "out", PruneConfig(trim_vision=True))
    assert manifest["steps"][-1]["vision_layers_removed"] == [1] and manifest["stock_loadable"]
    from transformers import LlavaForConditionalGeneration

    stock = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert stock.config.vision_feature_layer == -1 and len(stock.model.vision_tower.encoder.layers) == 1
    assert torch.equal(logits(stock, proc), before)
    assert manifest["steps"][-1]["params_after"]["vision"] < manifest["steps"][-1]["params_before"]["vision"]


def test_refuses_quantized_model_in_library():
    import bitsandbytes as bnb

    model, proc = tiny_model("llava")
    layer = model.model.language_model.layers[0]
    layer.mlp.up_proj = bnb.nn.Linear8bitLt(64, 256, bias=False, has_fp16_weights=False)
    with pytest.raises(PruningError, match="quantized"):
        prune(model, proc, PruneConfig(glu=0.5))


# ---------------------------------------------------------------- CLI


def test_cli_prunes_with_calibration_criteria(tmp_path, llava, calib_dir):
    src = save_base(*llava, tmp_path / "base")
    out = tmp_path / "out"
    r = run_cli("prune", src, "--out", out, "--glu", "0.5", "--heads", "0.5", "--importance", "hybrid",
                "--head-importance", "activation", "--calibration", calib_dir, "--calibration-samples", "2")
    assert r.exit_code == 0, r.output
    assert "stock loadable: True" in r.output
    step = read_manifest(out)["steps"][-1]
    assert step["criterion"] == {"neurons": "hybrid", "heads": "activation"}
    assert step["calibration"]["n_samples"] == 2 and step["params"]["calibration"] == str(calib_dir)
    assert not list(tmp_path.glob("out.*"))  # no staging leftovers


@pytest.mark.parametrize("args,message", [
    (["--glu", "1.0"], "--glu must be a fraction"),
    (["--glu", "-0.1"], "--glu must be a fraction"),
    (["--glu", "0.1"], "possible ratios: 0.25, 0.5, 0.75"),
    (["--glu", "0.9"], "keeps no neurons"),
    (["--heads", "0.1"], "possible ratios"),
    (["--glu", "0.5", "--importance", "activation"], "needs calibration data"),
    (["--drop-layers", "1"], "needs calibration data"),
    (["--drop-layers", "2"], "drop at most 1"),
    (["--drop-layers", "0,1"], "must keep at least one"),
    (["--glu", "0.5", "--importance", "activation", "--calibration", "/nonexistent/calib"], "does not exist"),
])
def test_cli_bad_inputs_fail_cleanly(tmp_path, llava, args, message):
    src = save_base(*llava, tmp_path / "base")
    out = tmp_path / "out"
    r = run_cli("prune", src, "--out", out, *args)
    assert r.exit_code != 0
    assert message in r.output and r.output.count("\n") == 1, r.output
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_cli_refuses_non_glu_and_quantized_checkpoints(tmp_path):
    blip, _ = tiny_model("blip-2")
    src = save_base(blip, None, tmp_path / "blip")
    r = run_cli("prune", src, "--out", tmp_path / "o1", "--glu", "0.5")
    assert r.exit_code != 0 and "has no GLU MLP" in r.output and not (tmp_path / "o1").exists()
    model, proc = tiny_model("llava")
    q = save_base(model, proc, tmp_path / "q")
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (q / "config.json").write_text(json.dumps(cfg))
    r = run_cli("prune", q, "--out", tmp_path / "o2", "--glu", "0.5")
    assert r.exit_code != 0 and "quantized" in r.output and r.output.count("\n") == 1
    assert not (tmp_path / "o2").exists()
    r = run_cli("prune", q, "--out", q, "--glu", "0.5")  # existing output without --overwrite
    assert r.exit_code != 0 and "already exists" in r.output
