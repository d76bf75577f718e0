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
    from vlmslim.recipes import load_recipe
    from vlmslim.recipes.demo import DEMO_RECIPE
    from vlmslim.pruning.config import HEAD_MODES
    from vlmslim.pruning.importance import HEAD_IMPORTANCE, NEURON_IMPORTANCE
    from vlmslim.quantization.recipes import COMPUTE_DTYPES
    from vlmslim.quantization.targets import DEFAULT_TARGET, TARGETS

    assert cli_module.NEURON_CRITERIA == tuple(sorted(NEURON_IMPORTANCE))
    assert cli_module.HEAD_CRITERIA == tuple(sorted(HEAD_IMPORTANCE))
    assert cli_module.HEAD_MODES == tuple(HEAD_MODES)
    assert cli_module.QUANT_TARGETS == tuple(sorted(TARGETS)) and cli_module.DEFAULT_TARGET == DEFAULT_TARGET
    assert cli_module.COMPUTE_DTYPES == tuple(sorted(COMPUTE_DTYPES))
    assert cli_module.DEMO_VARIANTS == tuple(v.name for v in load_recipe(DEMO_RECIPE).variants)
    assert cli_module.table.TABLE_FORMATS == FORMATS
    from vlmslim.tokens import REDUCERS

    assert cli_module.TOKEN_METHODS == tuple(sorted(REDUCERS))


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
