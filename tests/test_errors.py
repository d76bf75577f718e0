"""Bad inputs and failing disks end in one `Error:` line, a non-zero exit, and nothing under the final name.

Disk faults are injected below Python's file API: `full_disk` makes every open-for-writing under a root
fail with ENOSPC (as a full filesystem does), `read_only` makes mkdir and open-for-writing fail with
EROFS (a read-only mount). safetensors writes from Rust, so its own error text is injected separately.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from vlmslim.checkpoint import save_checkpoint
from vlmslim.cli import cli
from vlmslim.io import sha256_file
from vlmslim.loading import load_model
from vlmslim.manifest import new_manifest, read_manifest
from vlmslim.pruning import PruneConfig, prune_checkpoint
from vlmslim.testing import tiny_model


def run(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def one_error_line(result, *needles, code=1):
    """Exit `code`, no traceback, and the output ends in the one `Error:` line (progress bars of the
    loading before the failure may precede it)."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in result.output and lines[-1].startswith("Error: "), result.output
    assert sum("Error" in line for line in lines) == 1, result.output
    for n in needles:
        assert n.lower() in lines[-1].lower(), result.output


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(name))


def _writing(mode) -> bool:
    return any(c in mode for c in "wax+")


def _patch_writes(monkeypatch, root: Path, code: int, with_name: bool):
    root = str(root)
    real_open, real_mkdir = builtins.open, os.mkdir

    def fake_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and str(file).startswith(root) and _writing(mode):
            raise OSError(code, os.strerror(code), str(file) if with_name else None)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)  # pathlib's write_text / open go through io.open
    if code == errno.EROFS:
        def fake_mkdir(path, *args, **kwargs):
            if str(path).startswith(root):
                raise OSError(code, os.strerror(code), str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", fake_mkdir)


def full_disk(monkeypatch, root):
    # write(2) on a full disk fails with ENOSPC and Python's OSError then carries no file name
    _patch_writes(monkeypatch, root, errno.ENOSPC, with_name=False)


def read_only(monkeypatch, root):
    _patch_writes(monkeypatch, root, errno.EROFS, with_name=True)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    model, processor = tiny_model("llava")
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("m") / "base", new_manifest("tiny", model.config))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "shapes"
    assert run("data", "synthetic", "--out", out, "--n", 3).exit_code == 0
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory, base, dataset):
    out = tmp_path_factory.mktemp("r") / "base"
    r = run("bench", base, "--data", dataset, "--out", out, "--no-bertscore", "--no-energy", "--bootstrap", 10,
            "--max-new-tokens", 4)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def disk(tmp_path):
    (tmp_path / "disk").mkdir()
    return tmp_path / "disk"


# ---------------------------------------------------------------- full / read-only disks


def _commands(base, dataset, results, out):
    return {
        "prune": ["prune", base, "--out", out, "--glu", "0.5"],
        "quantize": ["quantize", base, "--out", out, "--bits", "8"],
        "bench": ["bench", base, "--data", dataset, "--out", out, "--no-bertscore", "--no-energy",
                  "--max-new-tokens", 2, "--bootstrap", 10],
        "synthetic": ["data", "synthetic", "--out", out, "--n", 2],
        "figures": ["figures", results, "--out", out],
    }


@pytest.mark.parametrize("command", ["prune", "quantize", "bench", "synthetic", "figures"])
def test_full_disk_is_one_line(command, base, dataset, results, disk, monkeypatch):
    args = _commands(base, dataset, results, disk / "out")[command]
    full_disk(monkeypatch, disk)
    r = run(*args)
    one_error_line(r, "no space left on device", "re-run")
    assert str(disk / "out") in r.output
    if command != "bench":  # a results dir keeps its flushed rows (a re-run resumes them)
        assert not (disk / "out").exists()
        assert leftovers(disk, "out") in ([], ["out.partial"])  # data keeps staged images to resume


@pytest.mark.parametrize("command", ["prune", "quantize", "bench", "synthetic", "figures"])
def test_read_only_parent_is_one_line(command, base, dataset, results, disk, monkeypatch):
    args = _commands(base, dataset, results, disk / "sub" / "out")[command]
    read_only(monkeypatch, disk)
    r = run(*args)
    one_error_line(r, "read-only file system", str(disk))
    assert list(disk.iterdir()) == []


def test_read_only_advice_is_not_free_space(dataset, disk, monkeypatch):
    """`data synthetic` on a read-only parent: the catch-all write error says what helps (another --out)."""
    read_only(monkeypatch, disk)
    r = run("data", "synthetic", "--out", disk / "sub" / "out", "--n", "2")
    one_error_line(r, "read-only file system", "choose an --out on a writable disk")
    assert "free space" not in r.output


def test_safetensors_full_disk_is_an_oserror(base, tmp_path, monkeypatch):
    from safetensors import SafetensorError
    from transformers import PreTrainedModel

    def full(self, *args, **kwargs):  # the text safetensors' Rust writer raises on ENOSPC
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    r = run("prune", base, "--out", tmp_path / "out", "--glu", "0.5")
    one_error_line(r, "no space left on device")
    assert leftovers(tmp_path, "out") == []


def test_other_os_errors_keep_their_traceback(base, tmp_path, monkeypatch):
    # Only the errnos a user fixes by freeing space or choosing another dir become one line.
    from vlmslim import checkpoint

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint, "write_json", broken)
    r = run("prune", base, "--out", tmp_path / "out", "--glu", "0.5")
    assert r.exit_code == 1 and isinstance(r.exception, OSError) and r.exception.errno == errno.EIO


def test_bench_out_is_a_file(base, dataset, tmp_path):
    (tmp_path / "afile").write_text("x")
    r = run("bench", base, "--data", dataset, "--out", tmp_path / "afile", "--no-bertscore", "--no-energy")
    one_error_line(r, "is a file", code=2)
    r = run("bench", base, base, "--data", dataset, "--out", tmp_path / "afile", "--no-bertscore", "--no-energy")
    one_error_line(r, "is a file", code=2)
    assert (tmp_path / "afile").read_text() == "x"


# ---------------------------------------------------------------- broken dataset files


def _copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _reseal(root: Path) -> None:
    meta = json.loads((root / "meta.json").read_text())
    meta["samples_sha256"] = sha256_file(root / "samples.jsonl")
    (root / "meta.json").write_text(json.dumps(meta))


def test_non_utf8_sample_row_is_one_line(base, dataset, tmp_path):
    root = _copy_dataset(dataset, tmp_path / "d")
    lines = (root / "samples.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"id": "', b'"id": "caf\xe9-')  # latin-1 bytes in UTF-8 JSON lines
    (root / "samples.jsonl").write_bytes(b"".join(lines))
    _reseal(root)  # a file that matches its recorded hash: only the decoding is wrong
    r = run("bench", base, "--data", root, "--out", tmp_path / "r", "--no-bertscore", "--no-energy")
    one_error_line(r, "samples.jsonl:2: not UTF-8")
    r = run("prune", base, "--out", tmp_path / "p", "--glu", "0.5", "--importance", "activation",
            "--calibration", root)
    one_error_line(r, "samples.jsonl:2: not UTF-8")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("content, message", [
    (b"[]", "expected a JSON object"),
    (b'"x"', "expected a JSON object"),
    (b'{"samples_sha256": "\xff"}', "meta.json: not UTF-8"),
])
def test_bad_meta_json_is_one_line(base, dataset, tmp_path, content, message):
    root = _copy_dataset(dataset, tmp_path / "d")
    (root / "meta.json").write_bytes(content)
    r = run("bench", base, "--data", root, "--out", tmp_path / "r", "--no-bertscore", "--no-energy")
    one_error_line(r, message)


def test_non_object_sample_row_is_one_line(base, dataset, tmp_path):
    root = _copy_dataset(dataset, tmp_path / "d")
    (root / "samples.jsonl").write_text("[1, 2]\n")
    _reseal(root)
    r = run("bench", base, "--data", root, "--out", tmp_path / "r", "--no-bertscore", "--no-energy")
    one_error_line(r, "samples.jsonl:1: bad sample row")


# ---------------------------------------------------------------- broken weights files


@pytest.fixture
def truncated(base, tmp_path):
    import shutil

    ckpt = shutil.copytree(base, tmp_path / "truncated")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ckpt


@pytest.fixture
def pickle_only(base, tmp_path):
    import shutil

    import torch

    ckpt = shutil.copytree(base, tmp_path / "pickle")
    (ckpt / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, ckpt / "pytorch_model.bin")
    return ckpt


@pytest.mark.parametrize("which, message", [("truncated", "is not a complete safetensors file"),
                                            ("pickle_only", "holds only pickle weights")])
def test_broken_weights_are_one_line_in_inspect_and_bench(which, message, request, dataset, tmp_path):
    ckpt = request.getfixturevalue(which)
    one_error_line(run("inspect", ckpt), message)
    one_error_line(run("inspect", "--json", ckpt), message)
    r = run("bench", ckpt, "--data", dataset, "--out", tmp_path / "r", "--no-bertscore", "--no-energy")
    one_error_line(r, message)
    one_error_line(run("prune", ckpt, "--out", tmp_path / "p", "--glu", "0.5"), message)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("edit", ["heads", "stock"])
def test_manifest_that_contradicts_the_weights_is_one_line(edit, base, dataset, tmp_path):
    # A hand-edited vlmslim.json: its architecture (or stock_loadable) no longer matches the saved tensors.
    pruned, _ = prune_checkpoint(base, tmp_path / "heads", PruneConfig(heads=0.25, round_to=1))
    manifest = json.loads((pruned / "vlmslim.json").read_text())
    if edit == "heads":
        manifest["architecture"]["text_layers"][0]["num_attention_heads"] = 4
    else:
        manifest["stock_loadable"] = True
    (pruned / "vlmslim.json").write_text(json.dumps(manifest))
    r = run("prune", pruned, "--out", tmp_path / "p", "--glu", "0.5")
    one_error_line(r, "do not match", "vlmslim.json")
    assert leftovers(tmp_path, "p") == []
    r = run("bench", pruned, "--data", dataset, "--out", tmp_path / "r", "--no-bertscore", "--no-energy")
    one_error_line(r, "do not match", "vlmslim.json")


# ---------------------------------------------------------------- head pruning that stock configs refuse


@pytest.mark.parametrize("family, kwargs, heads", [
    # 3 of 4 heads, hidden 64: Qwen2.5-VL's attention __init__ refuses it (slow: Qwen's 448-px vision forward)
    pytest.param("qwen2_5_vl", {"kv_heads": 4}, 3, marks=pytest.mark.slow),
    ("blip-2", {}, 3),  # OPT: "embed_dim must be divisible by num_heads"
])
def test_heads_025_on_qwen_and_blip2_reload_like_llama(family, kwargs, heads, tmp_path):
    from vlmslim.testing import TINY_MODELS

    model, processor = TINY_MODELS[family](0, **kwargs)
    src = save_checkpoint(model, processor, tmp_path / "base", new_manifest("tiny", model.config))
    r = run("prune", src, "--out", tmp_path / "out", "--heads", "0.25")
    assert r.exit_code == 0, r.output
    manifest = read_manifest(tmp_path / "out")
    assert manifest["stock_loadable"] is False
    assert manifest["steps"][-1]["reload_max_abs_diff"] == 0.0
    assert {layer["num_attention_heads"] for layer in manifest["architecture"]["text_layers"]} == {heads}
    reloaded, _ = load_model(tmp_path / "out")
    n = sum(p.numel() for p in reloaded.parameters())
    assert n == sum(manifest["steps"][-1]["params_after"].values())



# ---------------------------------------------------------------- pruning options that would do nothing


@pytest.mark.parametrize("args, code, message", [
    ([], 1, "nothing to prune"),
    (["--importance", "activation"], 2, "--importance scores MLP neurons: it needs --glu"),
    (["--importance", "l2", "--heads", "0.5"], 2, "--importance scores MLP neurons: it needs --glu"),
    (["--head-importance", "activation", "--glu", "0.5"], 2, "--head-importance scores attention heads: it needs --heads"),
])
def test_prune_options_that_prune_nothing_are_refused(args, code, message, base, dataset, tmp_path):
    r = run("prune", base, "--out", tmp_path / "out", *args, "--calibration", dataset)
    one_error_line(r, message, code=code)
    assert leftovers(tmp_path, "out") == []
    assert "Loading weights" not in r.output  # refused from the options alone


def test_importance_help_says_mlp_only():
    text = " ".join(CliRunner().invoke(cli, ["prune", "-h"]).output.split())
    assert "MLP neurons only (--glu)" in text and "heads: --head-importance" in text


def test_calibration_samples_more_than_the_set_is_refused(base, dataset, tmp_path):
    r = run("prune", base, "--out", tmp_path / "out", "--glu", "0.5", "--importance", "activation",
            "--calibration", dataset, "--calibration-samples", 64)
    one_error_line(r, "--calibration-samples 64", "has 3 samples")
    assert leftovers(tmp_path, "out") == [] and "Loading weights" not in r.output


def test_default_calibration_samples_uses_a_smaller_set_with_a_warning(base, dataset, tmp_path):
    r = CliRunner().invoke(cli, ["prune", str(base), "--out", str(tmp_path / "out"), "--glu", "0.5",
                                 "--importance", "activation", "--calibration", str(dataset)])
    assert r.exit_code == 0, r.output
    assert "WARNING" in r.output and "uses all 3 calibration samples (fewer than the default 32" in r.output
    # the slow part says what it does and shows progress, also when stderr is not a terminal (here)
    assert "calibration: 3 samples through the llava model" in r.output and "3/3 [" in r.output
    record = read_manifest(tmp_path / "out")["steps"][-1]["calibration"]
    assert record["requested"] == 32 and record["n_samples"] == 3
    r = run("prune", base, "--out", tmp_path / "out2", "--glu", "0.5", "--importance", "activation",
            "--calibration", dataset, "--calibration-samples", 2)
    assert r.exit_code == 0, r.output
    record = read_manifest(tmp_path / "out2")["steps"][-1]["calibration"]
    assert record["requested"] == 2 and record["n_samples"] == 2


# ---------------------------------------------------------------- library misuse


def test_save_checkpoint_with_a_bare_manifest_names_new_manifest(tmp_path):
    model, processor = tiny_model("llava")
    with pytest.raises(ValueError, match=r"vlmslim\.manifest\.new_manifest\(source, model\.config\)"):
        save_checkpoint(model, processor, tmp_path / "ckpt", {})
    with pytest.raises(ValueError, match="'steps' is not a list"):
        save_checkpoint(model, processor, tmp_path / "ckpt", {**new_manifest("x", model.config), "steps": None})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- bitsandbytes noise


BNB_KERNEL_MSG = ("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                  "`pip install kernels` and the kernels >= 0.11.1")  # bitsandbytes 0.50 backends/cpu/ops.py


def test_bnb_pip_install_kernels_warning_is_silenced_others_kept(caplog):
    import logging

    import vlmslim.loading.quantized  # noqa: F401  (installs the filter before bitsandbytes is imported)

    bnb_logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        bnb_logger.warning(BNB_KERNEL_MSG, "Version 1 is not available in the local cache")
        logging.getLogger("kernels._internals.hf_hub").warning(
            "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging "
            "Face Hub is in offline mode.")
        bnb_logger.warning("some other bitsandbytes warning")
        logging.getLogger("kernels._internals.hf_hub").warning("Skipping publisher trust check for 'x/y' because")
    assert [r.getMessage() for r in caplog.records] == [
        "some other bitsandbytes warning", "Skipping publisher trust check for 'x/y' because"]


@pytest.mark.slow  # a whole 4-bit quantize step in a fresh interpreter (the notice is logged at bnb import)
def test_four_bit_step_prints_no_kernels_hint(base, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "vlmslim", "quantize", str(base), "--out", str(tmp_path / "q"),
                        "--bits", "4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "pip install kernels" not in r.stderr and "kernels-community" not in r.stderr
