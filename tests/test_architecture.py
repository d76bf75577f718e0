import json

from click.testing import CliRunner

from vlmslim.cli import cli
from vlmslim.loading import available_configs, build_random_model, load_arch_config
from vlmslim.testing import tiny_llava


def test_shipped_configs_build_the_published_sizes():
    assert {"llava-1.5-7b", "smolvlm-instruct", "qwen2.5-vl-3b", "blip-image-captioning-base"} <= set(
        available_configs())
    from accelerate import init_empty_weights

    from vlmslim.loading import model_class
    config = load_arch_config("llava-1.5-7b")
    with init_empty_weights():
        model = model_class(config)._from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072


def test_blip_base_config_builds_the_published_size():
    """247.4 M counting the LM head's weight and bias apart from the word embeddings they are tied to (the
    "~247 M" quoted for Salesforce/blip-image-captioning-base); 224.0 M distinct parameters once tied."""
    from vlmslim.census import census
    from vlmslim.loading.skeleton import empty_model

    config = load_arch_config("blip-image-captioning-base")
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (384, 16)
    assert config.text_config.num_attention_heads == config.vision_config.num_attention_heads == 12
    model = empty_model(config)
    untied = sum(p.numel() for p in model.parameters())
    model.tie_weights()
    tied = sum(p.numel() for p in model.parameters())
    assert untied == 247_444_600 and tied == 223_971_644 and untied - tied == 30524 * 768 + 30524
    assert {k: v["params"] for k, v in census(model)["components"].items()} == {
        "vision": 86_090_496, "projector": 0, "language": 137_258_496, "lm_head": 622_652}


def test_random_weights_bench_on_cpu(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_llava()[0].config.to_dict()))
    model = build_random_model(str(config), dtype="float32", device="cpu")
    assert model.model.language_model.layers[0].mlp.gate_proj.weight.std().item() == pytest_approx(0.02)
    out = tmp_path / "arch"
    res = CliRunner().invoke(cli, ["bench", str(config), "--random-weights", "--out", str(out), "--device", "cpu",
                                   "--dtype", "float32", "--max-new-tokens", "4", "--glu", "0.5"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["metrics"] == {} and "random weights" in s["metric_notes"]["quality"]
    assert s["efficiency"]["decode_ms_per_token"] > 0 and s["efficiency"]["peak_vram_mb"] is None
    # glu 0.5 of 256 neurons with round-to 64: 128 kept in each of 2 layers
    assert s["model"]["pruning"][0]["params"] == {"glu": 0.5}
    assert s["efficiency"]["params"] == sum(p.numel() for p in model.parameters()) - 2 * 3 * 64 * 128


def test_random_weights_bench_with_fewer_image_tokens(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_llava()[0].config.to_dict()))  # 32 px / 8 px patches: 16 image tokens
    outs = {}
    for k in (None, 4):
        out = tmp_path / f"arch-{k}"
        args = ["bench", str(config), "--random-weights", "--out", str(out), "--device", "cpu", "--dtype", "float32",
                "--max-new-tokens", "4"] + ([] if k is None else ["--image-tokens", str(k), "--token-method", "pool"])
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        outs[k] = json.loads((out / "summary.json").read_text())
    assert outs[None]["model"]["token_reduction"] is None
    assert outs[4]["model"]["token_reduction"] == {"image_tokens": 4, "method": "pool", "seed": 0}
    # 16 text tokens + 16 image tokens, then 12 fewer image tokens
    assert outs[None]["engines"][0]["prompt_tokens"] - outs[4]["engines"][0]["prompt_tokens"] == 12
    res = CliRunner().invoke(cli, ["bench", str(config), "--random-weights", "--out", str(tmp_path / "bad"),
                                   "--device", "cpu", "--image-tokens", "5"])
    assert res.exit_code == 2 and "perfect square" in res.output and not (tmp_path / "bad").exists()


def test_random_weights_errors(tmp_path):
    res = CliRunner().invoke(cli, ["bench", "no-such-shape", "--random-weights", "--out", str(tmp_path / "o"),
                                   "--device", "cpu"])
    assert res.exit_code == 1 and "shipped: blip-image-captioning-base, llava-1.5-7b" in res.output
    res = CliRunner().invoke(cli, ["bench", "demo", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--data" in res.output


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=0.05)


def test_prune_and_quantize_accept_random_sources(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_llava()[0].config.to_dict()))
    runner = CliRunner()
    res = runner.invoke(cli, ["prune", f"random:{config}", "--out", str(tmp_path / "p"), "--glu", "0.5"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "p" / "vlmslim.json").read_text())
    assert manifest["base"]["model"] == f"random:{config}"
    assert manifest["steps"][0]["params_after"]["language"] < manifest["steps"][0]["params_before"]["language"]
    res = runner.invoke(cli, ["quantize", f"random:{config}", "--out", str(tmp_path / "q"), "--bits", "8"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "q" / "vlmslim.json").read_text())["census"]["components"]["language"]["linear"] == {"int8": 14}
