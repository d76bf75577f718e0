"""`vlmslim table`: one row per results dir, CIs, paired deltas vs the baseline, units; md / csv / latex; refuses
mixed protocols. On fabricated summary.json files (no model)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vlmslim.cli import cli
from vlmslim.errors import FiguresError
from vlmslim.figures.table import TableConfig, build_table, comparison_table


def write_run(root: Path, name: str, cider: float, ci: tuple, *, params: int, latency: float, baseline: Path | None = None,
              delta: tuple | None = None, batch_size: int = 8, precision: str = "16-bit", pruning=()) -> Path:
    d = root / name
    d.mkdir(parents=True)
    summary = {
        "model": {"name": name, "precision": precision, "pruning": list(pruning), "is_baseline": baseline is None,
                  "token_reduction": None},
        "task": "caption", "n_samples": 100,
        "metrics": {"cider": cider, "bleu4": cider / 10, "caption_len_mean": 10.25},
        "ci": {"cider": list(ci), "bleu4": [ci[0] / 10, ci[1] / 10]},
        "efficiency": {"params": params, "model_size_mb": params * 2 / 1e6, "latency_s_p50": latency,
                       "ttft_s_p50": latency / 4, "decode_ms_per_token": 5.5, "throughput_images_per_s": 1 / latency,
                       "peak_vram_mb": None, "energy_wh_per_sample": None, "batch_size": batch_size},
        "dataset": {"name": "coco", "sha256": "ab" * 32, "limit": 100, "seed": 0},
        "environment": {"device": "cuda (NVIDIA H200)"},
        "protocol": {"task": "caption", "prompt": "p", "max_new_tokens": 64, "batch_size": batch_size,
                     "dtype": "as saved", "engine": "eager", "ocr_tokens": False},
        "paired_vs_baseline": None if baseline is None else {
            "baseline": str(baseline), "baseline_model": baseline.name, "n_common": 100,
            "differences": {"cider": {"diff": delta[0], "lo": delta[1], "hi": delta[2]}}},
    }
    (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    base = write_run(tmp_path, "base", 1.10, (1.0, 1.2), params=7_000_000_000, latency=0.5)
    glu = write_run(tmp_path, "glu30", 1.05, (0.95, 1.15), params=5_200_000_000, latency=0.4, baseline=base,
                    delta=(-0.05, -0.09, -0.01), pruning=[{"kind": "prune", "method": "glu", "params": {"glu": 0.3}}])
    nf4 = write_run(tmp_path, "nf4", 1.12, (1.02, 1.22), params=7_000_000_000, latency=0.6, baseline=base,
                    delta=(0.02, -0.01, 0.05), precision="nf4")
    return [base, glu, nf4]


def test_markdown_rows_have_cis_paired_deltas_and_units(runs):
    text = comparison_table(runs)
    lines = text.splitlines()
    assert lines[0] == ("| variant | pruning | precision | CIDEr-D [95% CI] | Δ CIDEr-D vs base [paired 95% CI] | "
                        "BLEU-4 [95% CI] | words | params (M) | size (MB) | latency p50 (s) | TTFT p50 (s) | "
                        "decode (ms/token) | throughput (img/s) |")  # no VRAM/energy column: no run has them
    assert lines[1] == "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == ("| base | none | 16-bit | 1.100 [1.000, 1.200] | baseline | 0.110 [0.100, 0.120] | 10.2 | "
                        "7000.00 | 14000.00 | 0.500 | 0.125 | 5.50 | 2.00 |")
    assert lines[3].startswith("| glu30 | glu 30% | 16-bit | 1.050 [0.950, 1.150] | -0.050 [-0.090, -0.010] |")
    assert lines[4].startswith("| nf4 | none | nf4 | 1.120 [1.020, 1.220] | +0.020 [-0.010, 0.050] |")


def test_csv_keeps_numbers_numeric_with_ci_columns(runs):
    text = comparison_table(runs, TableConfig(format="csv", columns="name,cider,cider_delta,latency,params"))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["name", "cider", "cider_ci_lo", "cider_ci_hi", "cider_delta", "cider_delta_ci_lo",
                             "cider_delta_ci_hi", "latency_s_p50", "params_m"]
    assert [float(rows[1][k]) for k in ("cider", "cider_ci_lo", "cider_ci_hi", "cider_delta", "cider_delta_ci_lo")] \
        == [1.05, 0.95, 1.15, -0.05, -0.09]
    assert rows[0]["cider_delta"] == "" and float(rows[0]["params_m"]) == 7000.0


def test_latex_is_escaped_and_columns_sort(runs):
    text = comparison_table(runs, TableConfig(format="latex", columns=("name", "cider", "cider_delta"), sort="-cider"))
    lines = text.splitlines()
    assert lines[:4] == [r"\begin{tabular}{lrr}", r"\toprule",
                         r"variant & CIDEr-D [95\% CI] & $\Delta$ CIDEr-D vs base [paired 95\% CI] \\", r"\midrule"]
    assert [line.split(" & ")[0] for line in lines[4:7]] == ["nf4", "base", "glu30"]
    assert lines[-1] == r"\end{tabular}"
    ascending = build_table(runs, TableConfig(sort="latency"))
    assert [r.name for r in ascending.runs] == ["glu30", "base", "nf4"]


def test_mixed_protocols_are_refused_or_tagged(runs, tmp_path):
    odd = write_run(tmp_path / "b1", "glu30-b1", 1.0, (0.9, 1.1), params=5_200_000_000, latency=0.1,
                    baseline=runs[0], delta=(-0.1, -0.2, 0.0), batch_size=1)
    with pytest.raises(FiguresError, match=r"runs differ in batch_size \(8: base, glu30, nf4 vs 1: glu30-b1\)"):
        build_table([*runs, odd])
    table = build_table([*runs, odd], TableConfig(allow_mixed=True))
    assert table.columns[1][0] == "protocol" and [c.value(r) for r in table.runs for k, c in table.columns[1:2]] == [
        "batch 8", "batch 8", "batch 8", "batch 1"]
    assert "runs differ in batch_size" in table.notes[0]


def test_deltas_against_another_baseline_are_not_shown(runs):
    text = comparison_table(runs, TableConfig(baseline="glu30", columns="name,cider_delta"))
    assert text.splitlines()[2:5] == ["| base | – |", "| glu30 | baseline |", "| nf4 | – |"]
    assert "no paired differences vs glu30 recorded for base, nf4" in text


def test_cli_table_formats_and_one_line_errors(runs, tmp_path):
    res = CliRunner().invoke(cli, ["table", *map(str, runs), "--format", "csv", "--columns", "name,cider"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["name,cider,cider_ci_lo,cider_ci_hi", "base,1.1,1.0,1.2",
                                       "glu30,1.05,0.95,1.15", "nf4,1.12,1.02,1.22"]
    res = CliRunner().invoke(cli, ["table", *map(str, runs), "--columns", "name,cidr"])
    assert res.exit_code == 1 and "unknown column 'cidr'; known: name, pruning" in res.output
    res = CliRunner().invoke(cli, ["table", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "does not exist" in res.output
