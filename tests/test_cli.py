import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from vlmslim import cli as cli_module
from vlmslim.cli import cli


def test_help_lists_every_step():
    out = CliRunner().invoke(cli, ["-h"]).output
    for command in ("data", "prune", "quantize", "bench", "figures", "inspect", "demo", "sweep", "table"):
        assert f"  {command} " in out


def test_spelled_out_choices_equal_the_registries():
    from vlmslim.figures.table import FORMATS
    from vlmslim.pruning.config import DEFAULT_CALIBRATION_SAMPLES, HEAD_MODES
    from vlmslim.recipes import load_recipe
    from vlmslim.recipes.demo import DEMO_RECIPE
    from vlmslim.pruning.importance import HEAD_IMPORTANCE, NEURON_IMPORTANCE
    from vlmslim.quantization.recipes import COMPUTE_DTYPES
    from vlmslim.quantization.targets import DEFAULT_TARGET, TARGETS

    assert cli_module.NEURON_CRITERIA == tuple(sorted(NEURON_IMPORTANCE))
    assert cli_module.HEAD_CRITERIA == tuple(sorted(HEAD_IMPORTANCE))
    assert cli_module.HEAD_MODES == tuple(HEAD_MODES)
    assert cli_module.DEFAULT_CALIBRATION_SAMPLES == DEFAULT_CALIBRATION_SAMPLES
    assert cli_module.QUANT_TARGETS == tuple(sorted(TARGETS)) and cli_module.DEFAULT_TARGET == DEFAULT_TARGET
    assert cli_module.COMPUTE_DTYPES == tuple(sorted(COMPUTE_DTYPES))
    assert cli_module.DEMO_VARIANTS == tuple(v.name for v in load_recipe(DEMO_RECIPE).variants)
    assert cli_module.table.TABLE_FORMATS == FORMATS
    from vlmslim.tokens import REDUCERS

    assert cli_module.TOKEN_METHODS == tuple(sorted(REDUCERS))
    from vlmslim.quantization.recipes import RECIPES

    assert cli_module.QUANT_RECIPES == tuple(sorted(RECIPES))


def test_cli_import_is_light():
    code = "import sys, vlmslim.cli; assert 'torch' not in sys.modules and 'datasets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("args, expect", [
    (["quantize", "m", "--out", "o", "--bits", "3"], "Invalid value for '--bits'"),
    (["prune", "m"], "Missing option '--out'"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_usage_errors_are_one_line(args, expect):
    res = subprocess.run([sys.executable, "-m", "vlmslim", *args], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("Error: ") and expect in res.stderr


@pytest.mark.parametrize("where", ["group", "command"])
def test_verbosity_options_before_or_after_the_subcommand(where, tmp_path):
    def synthetic(*flags):
        args = ["data", "synthetic", "--out", str(tmp_path / f"d{len(list(tmp_path.iterdir()))}"), "--n", "2"]
        args = [*flags, *args] if where == "group" else [*args, *flags]
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        return r.output

    assert "INFO" in synthetic()
    assert "INFO" not in synthetic("-q") and "INFO" not in synthetic("--quiet")
    assert "DEBUG" in synthetic("-v") and "DEBUG" not in synthetic()
    assert "DEBUG" in synthetic("-vv")


def test_inspect_of_a_vlmslim_checkpoint_imports_no_torch(tmp_path):
    """`vlmslim inspect` reads the manifest, config.json and the weights headers only: a checkpoint with a
    manifest needs neither torch nor transformers (they cost seconds to import). A plain HF dir needs an
    empty (meta) model for its census."""
    code = ("import sys, json; from click.testing import CliRunner; from vlmslim.cli import cli; "
            "r = CliRunner().invoke(cli, ['inspect', '--json', 'demo']); assert r.exit_code == 0, r.output; "
            "info = json.loads(r.output); heavy = sorted(m for m in ('torch', 'transformers', 'accelerate', "
            "'bitsandbytes', 'safetensors.torch') if m in sys.modules); "
            "print(json.dumps({'heavy': heavy, 'params': info['census']['total_params'], "
            "'layers': info['shapes']['language']['num_hidden_layers']}))")
    demo = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout)
    assert demo == {"heavy": [], "params": 3_907_968, "layers": 4}
    from vlmslim.testing import tiny_model

    model, processor = tiny_model("llava")
    model.save_pretrained(tmp_path / "hf")  # no vlmslim.json: the census comes from a meta skeleton
    r = CliRunner().invoke(cli, ["inspect", "--json", str(tmp_path / "hf")])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["census"]["total_params"] == sum(p.numel() for p in model.parameters())
    assert info["shapes"]["language"]["num_hidden_layers"] == 2 and info["manifest"] is None


@pytest.mark.slow  # two real benches of the demo on 20 scenes (~40 s)
def test_bench_help_example_runs_as_written(tmp_path, monkeypatch):
    """Every line of `vlmslim bench -h`'s example, run in order in an empty dir (it once named checkpoints
    it never made)."""
    import shlex

    monkeypatch.chdir(tmp_path)
    text = CliRunner().invoke(cli, ["bench", "-h"]).output
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("vlmslim ")]
    assert len(lines) == 4 and lines[-1].startswith("vlmslim bench ckpt/glu30")
    for line in lines:
        res = CliRunner().invoke(cli, shlex.split(line)[1:])
        assert res.exit_code == 0, (line, res.output)
    summary = json.loads((tmp_path / "results" / "glu30" / "summary.json").read_text())
    assert summary["n_samples"] == 20 and summary["paired_vs_baseline"] is not None
