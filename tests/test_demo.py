import json

import pytest
from click.testing import CliRunner

from vlmslim.cli import cli


@pytest.mark.slow  # ~45 s: every step on the demo model, then a resume
def test_reduced_demo_end_to_end_and_resume(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n", "6", "--batch-size", "6", "--bootstrap", "20",
            "--variants", "base,glu30,glu80,nf4", "--no-energy"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    for name in ("base", "glu30", "glu80", "nf4"):
        summary = json.loads((out / "results" / name / "summary.json").read_text())
        assert summary["n_samples"] == 6 and summary["model"]["name"] == name
    base = json.loads((out / "results" / "base" / "summary.json").read_text())
    glu80 = json.loads((out / "results" / "glu80" / "summary.json").read_text())
    nf4 = json.loads((out / "results" / "nf4" / "summary.json").read_text())
    assert base["metrics"]["cider"] > 5.0  # the shipped captioner on held-out scenes
    assert glu80["metrics"]["cider"] < base["metrics"]["cider"]
    assert nf4["model"]["precision"] == "nf4" and nf4["efficiency"]["params"] == base["efficiency"]["params"]
    assert (out / "figures" / "frontier_latency.png").exists() and (out / "figures" / "spotcheck.html").exists()
    assert "glu80" in res.output and "CIDEr-D" in res.output
    # A re-run finds every artifact and redoes nothing.
    stamp = (out / "results" / "glu30" / "summary.json").stat().st_mtime_ns
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert (out / "results" / "glu30" / "summary.json").stat().st_mtime_ns == stamp


def test_demo_rejects_unknown_variant(tmp_path):
    res = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "d"), "--variants", "base,glu99"])
    assert res.exit_code == 2 and "unknown demo variant" in res.output
    assert not (tmp_path / "d").exists()
