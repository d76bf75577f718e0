"""Streaming (layer-by-layer) pruning gives the in-memory prune's checkpoint, file for file."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from studies.prune_streaming import manifest_without_timings

from vlmslim.checkpoint import reference_logits
from vlmslim.cli import cli
from vlmslim.loading import empty_model, load_model
from vlmslim.pruning import PruneConfig, prune_checkpoint
from vlmslim.pruning.shards import ShardWriter
from vlmslim.testing import tiny_model



@pytest.fixture(scope="module")
def llava_src(tmp_path_factory):
    """The tiny LLaVA saved in many small shards (plus its processor): the streaming input."""
    model, processor = tiny_model("llava")
    src = tmp_path_factory.mktemp("src") / "llava"
    model.save_pretrained(src, max_shard_size="100KB")
    processor.save_pretrained(src)
    assert len(list(src.glob("*.safetensors"))) > 3
    return src


def _assert_same_checkpoint(memory, streamed):
    files = sorted(p.name for p in memory.iterdir())
    assert files == sorted(p.name for p in streamed.iterdir())
    for name in files:
        if name not in ("vlmslim.json", "README.md"):
            assert (memory / name).read_bytes() == (streamed / name).read_bytes(), name
    for f in memory.glob("*.safetensors"):  # the same, said as tensors: names, dtypes, values
        a, b = load_file(f), load_file(streamed / f.name)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert manifest_without_timings(memory) == manifest_without_timings(streamed)
    assert json.loads((streamed / "vlmslim.json").read_text())["steps"][-1]["reload_check"] == "shapes"


@pytest.mark.parametrize("options", [dict(glu=0.5), dict(heads=0.5), dict(glu=0.5, heads=0.25, round_to=32)],
                         ids=["glu", "heads", "glu+heads"])
def test_streaming_output_equals_in_memory(tmp_path, llava_src, options):
    config = PruneConfig(**options)
    prune_checkpoint(llava_src, tmp_path / "memory", config)
    _, manifest = prune_checkpoint(llava_src, tmp_path / "streamed", config, streaming=True)
    _assert_same_checkpoint(tmp_path / "memory", tmp_path / "streamed")
    step = manifest["steps"][-1]
    assert sum(step["params_after"].values()) < sum(step["params_before"].values())
    # 6 of 8 heads (64 hidden) is not a stock LlamaConfig: that output reloads through the manifest's architecture
    assert manifest["stock_loadable"] == ("heads" not in options or options["heads"] == 0.5)
    if options.get("heads") == 0.25:  # reloads through load_model with the in-memory output's logits
        a, pa = load_model(tmp_path / "memory")
        b, pb = load_model(tmp_path / "streamed")
        assert torch.equal(reference_logits(a, pa), reference_logits(b, pb))


def test_streaming_paligemma_tied_embeddings(tmp_path):
    """A second family: Gemma's GeGLU MLP and tied embeddings (lm_head is not written)."""
    model, processor = tiny_model("paligemma")
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="200KB")
    processor.save_pretrained(src)
    config = PruneConfig(glu=0.5, round_to=16)
    prune_checkpoint(src, tmp_path / "memory", config)
    prune_checkpoint(src, tmp_path / "streamed", config, streaming=True)
    _assert_same_checkpoint(tmp_path / "memory", tmp_path / "streamed")


def test_shard_writer_lays_out_save_pretrained_files(tmp_path):
    """Several output shards + index: byte-equal to save_pretrained's, tensors written in any order."""
    model, _ = tiny_model("llava")
    model.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    skeleton = empty_model(model.config)
    (tmp_path / "ours").mkdir()
    writer = ShardWriter(skeleton, tmp_path / "ours", max_shard_size="100KB")
    state = model.state_dict()
    for key in reversed(writer.model_keys()):
        writer.write(key, state[key])
    writer.close()
    hf = sorted(p.name for p in (tmp_path / "hf").iterdir() if "safetensors" in p.name)
    assert hf == sorted(p.name for p in (tmp_path / "ours").iterdir()) and len(hf) > 3
    for name in hf:
        assert (tmp_path / "hf" / name).read_bytes() == (tmp_path / "ours" / name).read_bytes(), name


@pytest.mark.parametrize("args,why", [
    (["--glu", "0.5", "--importance", "activation"], "--importance activation needs calibration activations"),
    (["--glu", "0.5", "--importance", "taylor"], "--importance taylor needs calibration activations"),
    (["--heads", "0.5", "--head-importance", "activation"], "--head-importance activation needs calibration"),
    (["--glu", "0.5", "--allocation", "owl"], "--allocation owl needs calibration activations"),
    (["--drop-layers", "1"], "--drop-layers N (layer redundancy is measured on calibration data) needs"),
    (["--glu", "0.5", "--drop-layers", "0,1"], "--streaming does not drop layers"),
    (["--glu", "0.5", "--trim-vision"], "--streaming does not trim vision layers"),
])
def test_streaming_refuses_what_needs_the_whole_model(tmp_path, llava_src, calib_dir, args, why):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["prune", str(llava_src), "--out", str(out), "--streaming",
                                 "--calibration", str(calib_dir), *args])
    assert r.exit_code != 0
    message = r.output.strip()
    assert why in message and "--streaming" in message
    assert len(message.splitlines()) == 1, message
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_streaming_refuses_random_weights(tmp_path):
    r = CliRunner().invoke(cli, ["prune", "random:llava-1.5-7b", "--out", str(tmp_path / "o"), "--glu", "0.3",
                                 "--streaming"])
    assert r.exit_code != 0 and "local checkpoint directory" in r.output and not (tmp_path / "o").exists()


def test_cli_streaming(tmp_path, llava_src):
    r = CliRunner().invoke(cli, ["prune", str(llava_src), "--out", str(tmp_path / "o"), "--glu", "0.5",
                                 "--streaming"])
    assert r.exit_code == 0, r.output
    assert "reload check: shapes (streaming)" in r.output
    assert json.loads((tmp_path / "o" / "vlmslim.json").read_text())["steps"][-1]["method"] == "glu"
