import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from vlmslim import __version__
from vlmslim.census import census
from vlmslim.loading import load_model
from vlmslim.manifest import MANIFEST, new_manifest
from vlmslim.checkpoint import reference_logits, save_checkpoint, verify_reload
from vlmslim.cli import cli
from vlmslim.errors import ModelLoadError, OutputExistsError, UnsupportedFamilyError
from vlmslim.families import FAMILIES, get_family
from vlmslim.testing import tiny_model


def _save(model, processor, out, **kw):
    return save_checkpoint(model, processor, out, new_manifest("tiny-test", model.config, seed=0), **kw)


def test_roundtrip_identical_logits(any_family, tmp_path):
    name, model, processor = any_family
    expected = reference_logits(model, processor)
    _save(model, processor, tmp_path / "ckpt")
    assert verify_reload(tmp_path / "ckpt", expected, atol=0.0) == 0.0
    reloaded, reloaded_proc = load_model(tmp_path / "ckpt")
    assert not reloaded.training
    assert (reloaded_proc is None) == (processor is None)
    manifest = json.loads((tmp_path / "ckpt" / MANIFEST).read_text())
    assert manifest["family"] == name and manifest["steps"] == []
    assert manifest["bytes_on_disk"] > 0 and manifest["library_versions"]["torch"]
    assert (tmp_path / "ckpt" / "README.md").read_text().startswith("# vlmslim checkpoint")


def _independent_count(model, paths, exclude=()):
    """Parameters under `paths` minus those under `exclude`, counted through get_submodule."""
    seen = set()
    for p in paths:
        try:
            seen |= {id(t) for t in model.get_submodule(p).parameters()}
        except AttributeError:  # a path naming a parameter (blip-2 query_tokens)
            seen.add(id(model.get_parameter(p)))
    for p in exclude:
        seen -= {id(t) for t in model.get_submodule(p).parameters()}
    return sum(t.numel() for t in model.parameters() if id(t) in seen)


def test_census_matches_real_parameter_count(any_family):
    name, model, _ = any_family
    family = get_family(model)
    c = census(model)["components"]
    assert sum(v["params"] for v in c.values()) == sum(p.numel() for p in model.parameters())
    nested = [p for p in family.projector if any(p.startswith(v + ".") for v in family.vision)]
    assert c["vision"]["params"] == _independent_count(model, family.vision, exclude=nested)
    assert c["projector"]["params"] == _independent_count(model, family.projector)
    # a weight tied to the input embeddings counts once, in "language" (BLIP's head also has its own
    # transform + bias, so it is not all-or-nothing)
    language = {id(t) for t in model.get_submodule(family.language).parameters()}
    head = model.get_submodule(family.lm_head).parameters()
    assert c["lm_head"]["params"] == sum(t.numel() for t in head if id(t) not in language)
    # every Linear is counted, and all are fp32 in a freshly built model
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert sum(n for v in c.values() for n in v["linear"].values()) == n_linear
    assert {k for v in c.values() for k in v["linear"]} == {"fp32"}


def test_census_dtype_counts():
    model, _ = tiny_model("llava")
    model.get_submodule("model.language_model").to(torch.bfloat16)
    c = census(model)["components"]
    assert c["language"]["linear"] == {"bf16": 14}  # 2 layers x (q,k,v,o,gate,up,down)
    assert c["vision"]["linear"] == {"fp32": 12}
    assert c["language"]["bytes"] == 2 * c["language"]["params"] + 0  # no persistent buffers


def test_save_refuses_existing_dir_and_keeps_it(llava, tmp_path):
    model, proc = llava
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _save(model, proc, out)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_overwrite_replaces(llava, tmp_path):
    model, proc = llava
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale.txt").write_text("x")
    _save(model, proc, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / MANIFEST).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_interrupted_save_leaves_nothing(llava, tmp_path, monkeypatch):
    model, proc = llava

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user hit Ctrl-C while the processor files were written

    monkeypatch.setattr(proc, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        _save(model, proc, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing" / "model")
    with pytest.raises(ModelLoadError, match="hub is unreachable"):
        load_model("llava-hf/llava-1.5-7b-hf")
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedFamilyError, match="supported: blip, blip-2, idefics3, llava"):
        load_model(tmp_path)


def test_unknown_family_lists_supported():
    with pytest.raises(UnsupportedFamilyError) as e:
        get_family("mllama")
    assert all(f in str(e.value) for f in FAMILIES)


def test_cli_version_help_inspect(llava, tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output.strip() == f"vlmslim, version {__version__}"
    help_text = runner.invoke(cli, ["-h"]).output
    assert "inspect" in help_text
    model, proc = llava
    _save(model, proc, tmp_path / "ckpt")
    res = runner.invoke(cli, ["inspect", str(tmp_path / "ckpt")])
    assert res.exit_code == 0, res.output
    assert "language" in res.output and "131,392" in res.output
    res = runner.invoke(cli, ["inspect", "--json", str(tmp_path / "ckpt")])
    info = json.loads(res.output)
    assert info["census"]["total_params"] == sum(p.numel() for p in model.parameters())
    assert info["shapes"]["language"]["num_key_value_heads"] == 4


@pytest.mark.parametrize("arg", ["does/not/exist", "llava-hf/llava-1.5-7b-hf"])
def test_cli_bad_model_one_line_error(arg):
    res = CliRunner().invoke(cli, ["inspect", arg])
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and res.output.startswith("Error: ")


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "vlmslim", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"vlmslim, version {__version__}"


def test_git_revision_is_vlmslims_own_never_the_cwds_repo(tmp_path, monkeypatch):
    import vlmslim.manifest as manifest_mod

    def git(*args, cwd):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    foreign = tmp_path / "other-project"
    foreign.mkdir()
    git("init", "-q", cwd=foreign)
    (foreign / "setup.cfg").write_text("[metadata]\nname = other\n")
    git("add", "setup.cfg", cwd=foreign)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=foreign)
    theirs = git("rev-parse", "HEAD", cwd=foreign)
    monkeypatch.chdir(foreign)  # running from inside another repository
    ours = manifest_mod.git_revision()
    assert ours is None or theirs not in ours
    package_root = manifest_mod._PACKAGE_DIR.parent
    if (package_root / ".git").exists():  # tests run from a vlmslim checkout: its own commit
        assert ours is not None and ours.startswith(git("rev-parse", "HEAD", cwd=package_root))
    # vlmslim vendored inside another project's repo: no revision rather than theirs
    (foreign / "vendor" / "vlmslim").mkdir(parents=True)
    monkeypatch.setattr(manifest_mod, "_PACKAGE_DIR", foreign / "vendor" / "vlmslim")
    assert manifest_mod.git_revision() is None
