import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vlmslim.cli import cli

# Recorded with the hard-coded demo pipeline this recipe replaced (vlmslim/demo/pipeline.py at a38646b):
# `vlmslim demo --n 6 --batch-size 6 --bootstrap 20 --no-energy --variants base,glu30,drop1,nf4,glu30-nf4,
# tokens16,glu30-nf4-tokens16`: every summary's metrics, CIs, paired differences, sizes and predictions.
REFERENCE = json.loads((Path(__file__).parent / "data" / "demo_n6_reference.json").read_text())


@pytest.mark.slow  # ~3 min on 2 cores: six variants (a layer drop on calibration data, nf4, tokens), then a resume
def test_demo_recipe_reproduces_the_hardcoded_pipeline_exactly(tmp_path):
    out = tmp_path / "demo"
    names = ["base", "glu30", "drop1", "nf4", "tokens16", "glu30-nf4-tokens16"]  # glu30-nf4: built, not benched
    args = ["demo", "--out", str(out), "--n", "6", "--batch-size", "6", "--bootstrap", "20",
            "--variants", ",".join(names), "--no-energy"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    for name in names:
        want = REFERENCE["variants"][name]
        summary = json.loads((out / "results" / name / "summary.json").read_text())
        rows = [json.loads(line) for line in (out / "results" / name / "samples.jsonl").read_text().splitlines()]
        got = {"metrics": summary["metrics"], "ci": summary["ci"],
               "paired": (summary["paired_vs_baseline"] or {}).get("differences"),
               "params": summary["efficiency"]["params"], "model_size_mb": summary["efficiency"]["model_size_mb"],
               "precision": summary["model"]["precision"], "token_reduction": summary["model"]["token_reduction"],
               "predictions": {r["id"]: r["prediction"] for r in rows}}
        assert json.loads(json.dumps(got)) == want, name  # exactly: same generations, same bootstrap
    lines = res.output.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("variant ")):]  # after the logs
    assert lines[0].split() == ["variant", "CIDEr-D", "95%", "CI", "BLEU-4", "words", "params", "M", "MB",
                                "latency", "p50", "s", "TTFT", "p50", "s", "decode", "ms/tok"]
    table = {line.split()[0]: line.split()[1:8] for line in lines[2:2 + len(names)]}
    assert table["drop1"] == ["3.811", "[2.401,", "5.080]", "0.774", "17.5", "3.12", "12.48"]  # the old demo's row
    assert table["glu30-nf4-tokens16"] == ["2.932", "[1.076,", "4.237]", "0.460", "17.8", "3.12", "4.38"]
    assert (out / "figures" / "frontier_latency.png").exists() and (out / "figures" / "spotcheck.html").exists()
    # A re-run finds every artifact and redoes nothing.
    stamp = (out / "results" / "glu30" / "summary.json").stat().st_mtime_ns
    n_events = len((out / "sweep.jsonl").read_text().splitlines())
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert (out / "results" / "glu30" / "summary.json").stat().st_mtime_ns == stamp
    again = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()[n_events:]]
    assert {e["event"] for e in again} == {"skip"}


def test_demo_is_the_shipped_recipe():
    from vlmslim.cli import DEMO_VARIANTS
    from vlmslim.recipes import load_recipe
    from vlmslim.recipes.demo import DEMO_RECIPE, demo_overrides

    recipe = load_recipe(DEMO_RECIPE)
    assert tuple(v.name for v in recipe.variants) == DEMO_VARIANTS  # names and order of the old pipeline
    assert recipe.data.options == {"n": 100, "seed": 0} and recipe.calibration.options == {"n": 32, "seed": 7}
    assert recipe.bench == {"batch_size": 20, "bootstrap": 1000, "seed": 0, "energy": True, "bertscore_model": None}
    assert recipe.variant("glu30-nf4").source == "glu30" and recipe.variant("tokens16-visionzip").bench_options == {
        "image_tokens": 16, "token_method": "visionzip"}
    small = load_recipe(DEMO_RECIPE, demo_overrides(n=6, batch_size=3, bootstrap=0, device="auto", energy=False))
    assert (small.data.options["n"], small.bench["batch_size"], small.bench["bootstrap"], small.bench["energy"],
            small.device) == (6, 3, 0, False, "auto")


def test_demo_rejects_unknown_variant(tmp_path):
    res = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "d"), "--variants", "base,glu99"])
    assert res.exit_code == 2 and "unknown demo variant" in res.output
    assert not (tmp_path / "d").exists()
