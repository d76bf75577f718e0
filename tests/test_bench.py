"""`vlmslim bench`: generation slicing, timing stats, results-dir format, resume, bad inputs, sweeps.

The tiny LLaVA generates random words; these tests check the machinery (what is recorded, where,
exactly once), not quality. The quality metrics have their own tests; until they are merged the
`metrics` fixture stands in a stub with the agreed interface.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import shutil
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from vlmslim.benchmarks import results as res
from vlmslim.io import sha256_file
from vlmslim.benchmarks.efficiency import energy_summary, nvml_gpu_ids, roofline, stats
from vlmslim.benchmarks.generate import FirstTokenTimer, decode_new_tokens, generate_batch
from vlmslim.benchmarks.run import BenchConfig, bench
from vlmslim.benchmarks.tasks import CAPTION_METRICS, TASKS
from vlmslim.checkpoint import save_checkpoint
from vlmslim.manifest import new_manifest
from vlmslim.cli import cli
from vlmslim.testing import tiny_model

PROMPT = "provide a caption for the image"  # every word is in the tiny tokenizer's vocabulary
# Caption runs score BERTScore by default (roberta-large): tests pass --no-bertscore or the offline MiniLM.
FAST = ["--max-new-tokens", "6", "--bootstrap", "10", "--no-energy", "--warmup", "1", "--no-bertscore"]
SUMMARY_KEYS = {"model", "task", "dataset", "data_dir", "n_samples", "metrics", "ci", "efficiency", "environment",
                "checkpoint_sha256", "protocol"}
EFFICIENCY_KEYS = {"latency_s_p50", "latency_s_p90", "ttft_s_p50", "decode_ms_per_token", "throughput_images_per_s",
                   "tokens_per_s", "peak_vram_mb", "model_size_mb", "params", "energy_wh_per_sample"}


# ---------------------------------------------------------------- fixtures


@dataclass
class _StubScore:
    metrics: dict
    ci: dict
    per_sample: dict
    notes: dict = field(default_factory=dict)

    def to_json(self) -> dict:  # as metrics.bootstrap.ScoreResult (the score cache stores this)
        return {"metrics": self.metrics, "ci": {k: list(v) for k, v in self.ci.items()},
                "per_sample": self.per_sample, "notes": self.notes}


def _stub_metrics() -> types.ModuleType:
    """The agreed metrics interface with a trivial score (share of answers with a reference word)."""

    def hit(pred, refs):
        return float(bool(set(pred.split()) & {w for r in refs for w in r.split()}))

    def score(keys):
        def fn(predictions, references, **kw):
            per = {i: {k: hit(p, references[i]) for k in keys} for i, p in predictions.items()}
            metrics = {k: float(np.mean([v[k] for v in per.values()])) for k in keys}
            return _StubScore(metrics, {k: (v, v) for k, v in metrics.items()}, per, {"stub": True})
        return fn

    m = types.ModuleType("vlmslim.benchmarks.metrics")
    m.score_captions = score(CAPTION_METRICS)
    m.score_vqa = score(("vqa_accuracy",))
    m.score_open_vqa = score(("rouge_l", "meteor"))
    m.BertScoreConfig = lambda **kw: kw
    m.paired_differences = lambda a, b, refs, **kw: {"cider": (0.0, 0.0, 0.0)}

    def with_bertscore(result, predictions, references, bertscore, **kw):  # BERTScore off, noted as the real one
        if bertscore is None:
            result.notes["bertscore"] = "disabled"
        return result

    m.with_bertscore = with_bertscore
    return m


@pytest.fixture(autouse=True)
def metrics(monkeypatch):
    try:  # the real module once merged (the e2e test then checks the real contract)
        return importlib.import_module("vlmslim.benchmarks.metrics")
    except ImportError:
        stub = _stub_metrics()
        monkeypatch.setitem(sys.modules, "vlmslim.benchmarks.metrics", stub)
        return stub


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model, processor = tiny_model("llava")
    return str(save_checkpoint(model, processor, tmp_path_factory.mktemp("m") / "tiny-llava",
                               new_manifest("tiny-llava", model.config)))


def make_dataset(root, n=4, task="caption", corrupt=()):
    """A dataset dir in the vlmslim layout: n random 32-px PNGs; indices in `corrupt` get garbage bytes."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = root / "images" / f"{i}.png"
        if i in corrupt:
            path.write_bytes(b"\x89PNG not really")
        else:
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        rows.append({"id": f"s{i}", "image": f"images/{i}.png", "task": task,
                     "question": None if task == "caption" else "what color is the circle ?",
                     "references": ["a red circle on the left", "a small red circle"], "extras": {}})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "meta.json").write_text(json.dumps({"dataset": "tiny-shapes",
                                                "samples_sha256": sha256_file(root / "samples.jsonl")}))
    return str(root)


def run_cli(*args):
    return CliRunner().invoke(cli, ["bench", *map(str, args)])


def ids_in(out):
    return [r["id"] for r in res.read_jsonl(out / "samples.jsonl")]


# ---------------------------------------------------------------- units


def test_stats_known_arrays():
    assert stats(range(1, 11)) == {"p50": 5.5, "p90": pytest.approx(9.1), "mean": 5.5}
    assert stats([3.0]) == {"p50": 3.0, "p90": 3.0, "mean": 3.0}
    assert stats([None, None]) == {"p50": None, "p90": None, "mean": None}
    assert stats([None, 2.0, 4.0])["mean"] == 3.0


def test_roofline_and_energy_absent_never_zero(monkeypatch):
    r = roofline(2_000_000_000, 2000.0, 4.0)  # 2 GB at 2 TB/s = 1 ms floor vs 4 ms measured
    assert r["decode_floor_ms_per_token"] == pytest.approx(1.0) and r["roofline_fraction"] == pytest.approx(0.25)
    assert roofline(1, None, 4.0)["roofline_fraction"] is None
    devices = [torch.device("cuda", 1)]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert nvml_gpu_ids(devices) == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # codecarbon counts physical GPUs: cuda:1 is GPU 6
    assert nvml_gpu_ids(devices) == [6]
    gpu0 = {"gpu_wh": None, "gpu_method": "measured (NVML)", "cpu_wh": 1.0, "ram_wh": 1.0, "cpu_method": "x",
            "ram_method": "estimated", "country": "USA", "note": "0 GPU energy"}
    per_sample, detail = energy_summary([{"n_generated": 4, "energy": gpu0}])
    assert per_sample is None and detail["notes"] == ["0 GPU energy"]
    cpu = dict(gpu0, gpu_method=None, note=None)
    per_sample, detail = energy_summary([{"n_generated": 4, "energy": cpu}, {"n_generated": 9, "energy": None}])
    assert per_sample == pytest.approx(0.5) and detail["basis"] == "cpu+ram (estimated)"


def test_decode_new_tokens_only_after_prompt():
    _, processor = tiny_model("llava")
    tok = processor.tokenizer
    prompt = tok("USER : provide a caption ASSISTANT :", return_tensors="pt").input_ids[0]
    answers = [tok.convert_tokens_to_ids(t.split()) for t in ("a red circle </s> <pad>", "two blue shapes on top")]
    seqs = torch.stack([torch.cat([prompt, torch.tensor(a)]) for a in answers])
    texts, counts = decode_new_tokens(tok, seqs, len(prompt), {tok.eos_token_id})
    assert texts == ["a red circle", "two blue shapes on top"]
    assert counts == [4, 5]  # EOS counted (a generated step), the pad after it not


def test_generate_batch_slices_and_times(llava, monkeypatch):
    model, processor = llava
    tok = processor.tokenizer
    answer = torch.tensor(tok.convert_tokens_to_ids("green square </s>".split()))

    def fake_generate(input_ids, logits_processor, **kw):
        for step in range(len(answer)):  # generate calls the processors once per step
            logits_processor(input_ids, torch.zeros(len(input_ids), 8))
        return torch.cat([input_ids, answer.expand(len(input_ids), -1)], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    images = [Image.new("RGB", (32, 32))] * 2
    out = generate_batch(model, processor, images, [PROMPT, "what color"], max_new_tokens=8)
    assert out.predictions == ["green square", "green square"]
    assert out.tokens == [3, 3] and out.steps == 3
    assert 0 < out.preprocess_s <= out.ttft_s <= out.latency_s and out.decode_ms_per_token >= 0


def test_first_token_timer_syncs_once():
    calls = []
    timer = FirstTokenTimer(lambda: calls.append(1))
    for _ in range(5):
        timer(None, None)
    assert timer.steps == 5 and len(calls) == 1 and timer.first is not None


def test_task_prompts_pinned():
    from vlmslim.data import Sample

    assert TASKS["caption"].prompt == "Provide a one-sentence caption for the provided image."
    assert TASKS["caption"].max_new_tokens == 64
    s = Sample("q1", "images/a.png", "vqa", "what is written?", ["stop"], {"ocr_tokens": ["STOP", "sign"]})
    vqa = TASKS["vqa"]
    expected = "what is written?\nAnswer the question using a single word or phrase."
    assert vqa.instruction(s, vqa.prompt, False) == expected
    assert "Reference OCR token: STOP, sign\n" in vqa.instruction(s, vqa.prompt, True)


def test_samples_writer_drops_torn_line(tmp_path):
    (tmp_path / "samples.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "predic')
    w = res.SamplesWriter(tmp_path)
    w.append([{"id": "c"}])
    w.close()
    assert ids_in(tmp_path) == ["a", "b", "c"]
    (tmp_path / "samples.jsonl").write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(res.BenchmarkError, match="line 2"):
        res.SamplesWriter(tmp_path)


# ---------------------------------------------------------------- end to end

_SUMMARY_SKELETON = {
    "model": {"name": "m", "path": "/m", "family": "llava", "precision": "16-bit", "pruning": [],
              "quantized_at_load": None, "is_baseline": True, "base_model": "b"},
    "task": "caption", "dataset": {"name": "d", "sha256": "0" * 64, "limit": None, "seed": 0},
    "n_samples": 3, "n_skipped": 0, "metrics": {"cider": 0.5}, "ci": {"cider": [0.4, 0.6]},
    "metric_notes": {"tokenizer": "PTB"}, "checkpoint_sha256": "1" * 64,
    "efficiency": {"params": 12, "model_size_mb": 3.0, "disk_mb": 3.0, "energy": {"note": "energy not measured"},
                   "components": {c: {"params": 10 if c == "vision" else 1, "mb": 2.0 if c == "language" else 0.5}
                                  for c in ("vision", "projector", "language", "lm_head", "other")}},
    "environment": {"device": "cpu (x)"}, "protocol": {"prompt": "p", "batch_size": 1},
    "run": {"sessions": 1, "resumed": False}, "paired_vs_baseline": None,
}



@pytest.mark.slow  # real METEOR, PTB and BERTScore (MiniLM) scoring; the stubbed-metric tests cover the plumbing
def test_bench_end_to_end_files_and_keys(tmp_path, ckpt, minilm):
    data = make_dataset(tmp_path / "data", n=4)
    out = tmp_path / "res"
    r = run_cli(ckpt, "--data", data, "--out", out, "--batch-size", "2", "--prompt", PROMPT, "--bertscore-model",
                minilm, "--max-new-tokens", "6", "--bootstrap", "10", "--warmup", "1")  # energy on: CPU estimate
    assert r.exit_code == 0, r.output
    assert "tiny-llava: cider" in r.output
    for f in ("config.yaml", "samples.jsonl", "sessions.jsonl", "summary.json", "summary.csv"):
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(s) and EFFICIENCY_KEYS <= set(s["efficiency"])
    assert set(TASKS["caption"].metric_keys) <= set(s["metrics"]) and set(s["ci"]) >= {"cider", "bleu4", "bertscore_f1"}
    assert 0 < s["metrics"]["bertscore_f1"] < 1 and s["protocol"]["bertscore_model"] == minilm
    assert s["n_samples"] == 4 and s["task"] == "caption" and s["dataset"]["name"] == "tiny-shapes"
    assert s["model"]["name"] == "tiny-llava" and s["model"]["family"] == "llava"
    assert s["model"]["precision"] == "32-bit" and s["model"]["is_baseline"] and s["model"]["pruning"] == []
    eff = s["efficiency"]
    assert eff["peak_vram_mb"] is None and eff["peak_rss_mb"] > 0  # CPU: no VRAM figure, never 0
    assert eff["roofline_fraction"] is None and eff["params"] > 0 and eff["disk_mb"] > 0
    assert eff["latency_s_p90"] >= eff["latency_s_p50"] > eff["ttft_s_p50"] > 0
    assert eff["energy_wh_per_sample"] > 0 and eff["energy"]["basis"] == "cpu+ram (estimated)"
    assert s["protocol"]["prompt"] == PROMPT and s["protocol"]["batch_size"] == 2 and s["protocol"]["greedy"]
    # every key resume refuses to mix is in the summary too (--baseline and figures read it from there)
    from vlmslim.benchmarks.results import PROTOCOL_KEYS

    assert set(PROTOCOL_KEYS) <= set(s["protocol"]), set(PROTOCOL_KEYS) - set(s["protocol"])
    assert (s["protocol"]["engine"], s["protocol"]["fuse"], s["protocol"]["attention"]) == ("eager", False, "sdpa")
    assert s["protocol"]["int4_decode_kernels"] is None  # no int4 layers in the fp32 demo
    assert s["protocol"]["prompt_example"].endswith(PROMPT + " ASSISTANT:")
    assert len(s["checkpoint_sha256"]) == 64 and s["environment"]["torch"] == torch.__version__
    rows = res.read_jsonl(out / "samples.jsonl")
    assert [r["id"] for r in rows] == ["s0", "s1", "s2", "s3"]
    for row in rows:
        assert {"prediction", "references", "latency_s", "ttft_s", "tokens", "scores"} <= set(row)
        assert row["scores"] and 0 < row["tokens"] <= 6 and row["batch_size"] == 2
        # The answer is decoded from the generated tokens only: no chat template, no instruction.
        assert not row["prediction"].startswith("USER") and PROMPT not in row["prediction"]
    flat = read_tidy_csv(out / "summary.csv")
    assert flat["cider"] == s["metrics"]["cider"] and flat["latency_s_p50"] == s["efficiency"]["latency_s_p50"]
    assert (flat["cider_ci_lo"], flat["cider_ci_hi"]) == tuple(s["ci"]["cider"])
    assert flat["cider_ci_lo"] <= flat["cider"] <= flat["cider_ci_hi"]
    assert flat["bertscore_f1_ci_lo"] <= flat["bertscore_f1"] <= flat["bertscore_f1_ci_hi"]
    assert (flat["name"], flat["task"], flat["batch_size"], flat["n_samples"]) == ("tiny-llava", "caption", 2, 4)
    assert flat["pruning"] == "none" and flat["glu_ratio"] == 0 and flat["params"] == s["efficiency"]["params"]
    assert flat["cider_delta"] == "" and flat["baseline"] == ""  # no --baseline: empty cells, same columns
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["generation"]["max_new_tokens"] == 6 and cfg["checkpoint_sha256"] == s["checkpoint_sha256"]

    # Same checkpoint, new dir, against the first as baseline: paired differences over the common samples.
    r = run_cli(ckpt, "--data", data, "--out", tmp_path / "res2", "--batch-size", "2", "--prompt", PROMPT,
                *FAST[:-1], "--bertscore-model", minilm, "--baseline", out)
    assert r.exit_code == 0, r.output
    paired = json.loads((tmp_path / "res2" / "summary.json").read_text())["paired_vs_baseline"]
    assert paired["n_common"] == 4 and {"cider", "bertscore_f1"} <= set(paired["differences"])
    # the same checkpoint, greedy: identical answers, so every paired difference is exactly 0
    assert paired["differences"]["bertscore_f1"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    flat2 = read_tidy_csv(tmp_path / "res2" / "summary.csv")
    assert list(flat2) == list(flat)  # a stable set of columns
    assert (flat2["cider_delta"], flat2["cider_delta_ci_lo"], flat2["cider_delta_ci_hi"]) == (0, 0, 0)
    assert flat2["baseline"] == "tiny-llava" and flat2["n_common"] == 4


def read_tidy_csv(path) -> dict:
    """The one row of a summary.csv, each cell parsed: a number, or a plain string (no list/JSON cells)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 2 and len(rows[0]) == len(rows[1]) == len(set(rows[0])), "one header + one row"
    assert len(rows[0]) <= 100, f"{len(rows[0])} columns"
    row = {}
    for key, cell in zip(*rows):
        assert "[" not in cell and "{" not in cell, (key, cell)
        try:
            row[key] = int(cell) if cell.lstrip("-").isdigit() else float(cell)
        except ValueError:
            row[key] = cell  # a plain string (or empty: absent)
    return row


def test_summary_csv_row_from_pruned_checkpoint_has_numeric_ratios():
    from vlmslim.benchmarks.summary import csv_row

    steps = [{"kind": "prune", "method": "glu+heads", "params": {"glu": 0.3, "heads": 0.25, "drop_layers": 0},
              "kept": {"mlp": {"len": 40, "sha256": "ab"}, "attention": [{"layer": 0, "q_heads": [0, 1, 2]}]}},
             {"kind": "prune", "method": "glu+layers", "params": {"glu": 0.5, "heads": 0.0, "drop_layers": 2},
              "dropped_layers": [3, 5]},
             {"kind": "quantize", "method": "nf4", "params": {"bits": 4}}]
    summary = json.loads(json.dumps(_SUMMARY_SKELETON))
    summary["model"].update(pruning=steps[:2], precision="nf4", is_baseline=False)
    row = csv_row(summary)
    assert row["pruning"] == "glu+heads, glu+layers" and row["dropped_layers"] == 2
    assert row["glu_ratio"] == pytest.approx(1 - 0.7 * 0.5) and row["heads_ratio"] == pytest.approx(0.25)
    assert row["precision"] == "nf4" and row["is_baseline"] is False
    assert all(v is None or isinstance(v, (str, int, float)) for v in row.values())
    assert row["meteor"] is None and row["meteor_ci_lo"] is None  # absent metric: empty cell, column kept
    assert row["vision_params"] == 10 and row["lm_head_params"] == 1


def test_interrupted_run_resumes_without_loss_or_duplicates(tmp_path, ckpt, stub_scores):
    data = make_dataset(tmp_path / "data", n=5)
    out = tmp_path / "res"
    seen = []

    def kill_after_two(rows):
        seen.extend(rows)
        if len(seen) >= 2:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run

    with pytest.raises(KeyboardInterrupt):
        bench(ckpt, data, str(out), max_new_tokens=4, bootstrap=5, energy=False, progress=False,
              bertscore_model=None, on_batch=kill_after_two)
    assert ids_in(out) == ["s0", "s1"]
    with open(out / "samples.jsonl", "a") as f:
        f.write('{"id": "s2", "prediction": "half a li')  # a kill in the middle of a write
    r = run_cli(ckpt, "--data", data, "--out", out, "--max-new-tokens", "4", "--bootstrap", "5", "--no-energy",
                "--no-bertscore")
    assert r.exit_code == 0, r.output
    ids = ids_in(out)
    assert sorted(ids) == [f"s{i}" for i in range(5)] and len(ids) == len(set(ids))
    s = json.loads((out / "summary.json").read_text())
    assert s["n_samples"] == 5 and s["run"] == {**s["run"], "sessions": 2, "resumed": True, "completed_sessions": 1}
    # A third run has nothing left to generate: it rewrote the summary (cached scores), adding no rows.
    r = run_cli(ckpt, "--data", data, "--out", out, "--max-new-tokens", "4", "--bootstrap", "5", "--no-energy",
                "--no-bertscore")
    assert r.exit_code == 0, r.output
    assert len(ids_in(out)) == 5

    # Different protocol or weights: refused before anything is loaded, naming what changed.
    r = run_cli(ckpt, "--data", data, "--out", out, "--max-new-tokens", "8", "--no-energy")
    assert r.exit_code == 1 and "max_new_tokens: 4 -> 8" in r.output and "new --out" in r.output
    model, processor = tiny_model("llava", seed=1)
    other = save_checkpoint(model, processor, tmp_path / "other", new_manifest("x", model.config))
    r = run_cli(other, "--data", data, "--out", out, "--max-new-tokens", "4", "--no-energy")
    assert r.exit_code == 1 and "checkpoint files (model.safetensors;" in r.output
    assert len(ids_in(out)) == 5


def test_rerun_of_finished_bench_reuses_cached_scores(tmp_path, ckpt, metrics, monkeypatch, caplog):
    """Scores are cached in the results dir keyed by predictions, references and scoring settings: re-running a
    finished bench (or its --baseline comparison) does not re-score; other settings do; scoring is logged."""
    import logging
    import shutil as _shutil

    real_which = _shutil.which  # Java-less scoring keeps this fast; the cache does not depend on the scorer
    monkeypatch.setattr(_shutil, "which", lambda name, *a, **k: None if name == "java" else real_which(name, *a, **k))
    calls = {"score": 0, "paired": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(metrics, "score_captions", counting("score", metrics.score_captions))
    monkeypatch.setattr(metrics, "paired_differences", counting("paired", metrics.paired_differences))
    data = make_dataset(tmp_path / "data", n=3)
    opts = dict(max_new_tokens=4, bootstrap=5, energy=False, progress=False, bertscore_model=None, java_fallback=True)
    with caplog.at_level(logging.INFO, logger="vlmslim"):
        first = bench(ckpt, data, str(tmp_path / "res"), **opts)
    assert calls == {"score": 1, "paired": 0}
    assert any("scoring 3 caption predictions" in r.getMessage() for r in caplog.records)
    first_scores = scores_in(tmp_path / "res")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlmslim"):
        again = bench(ckpt, data, str(tmp_path / "res"), **opts)
    assert calls == {"score": 1, "paired": 0}  # finished run, same settings: the cached scores
    assert any("cached" in r.getMessage() for r in caplog.records)
    assert again["metrics"] == first["metrics"] and again["ci"] == first["ci"]
    assert scores_in(tmp_path / "res") == first_scores and all(first_scores)
    bench(ckpt, data, str(tmp_path / "res"), **{**opts, "bootstrap": 6})  # another scoring setting: re-scored
    assert calls == {"score": 2, "paired": 0}

    base = str(tmp_path / "res")
    paired = bench(ckpt, data, str(tmp_path / "res2"), **opts, baseline=base)["paired_vs_baseline"]
    assert calls == {"score": 3, "paired": 1}
    again = bench(ckpt, data, str(tmp_path / "res2"), **opts, baseline=base)["paired_vs_baseline"]
    assert calls == {"score": 3, "paired": 1} and again == paired


def scores_in(out):
    return [r["scores"] for r in res.read_jsonl(out / "samples.jsonl")]


def test_corrupt_image_is_recorded_skipped_counted(tmp_path, ckpt, stub_scores):
    data = make_dataset(tmp_path / "data", n=4, corrupt={1})
    out = tmp_path / "res"
    r = run_cli(ckpt, "--data", data, "--out", out, "--batch-size", "2", *FAST)
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["n_samples"] == 3 and s["n_skipped"] == 1
    assert s["skipped"][0]["id"] == "s1" and "cannot decode image" in s["skipped"][0]["reason"]
    assert "bertscore_f1" not in s["metrics"] and s["metric_notes"]["bertscore"] == "disabled"  # --no-bertscore
    r = run_cli(ckpt, "--data", data, "--out", out, "--batch-size", "2", *FAST)
    assert r.exit_code == 0 and sorted(ids_in(out)) == ["s0", "s1", "s2", "s3"]


@pytest.mark.parametrize("case, expect", [
    ("missing", "dataset directory not found"),
    ("wrong-task", "--task vqa needs a vqa dataset"),
    ("batch0", "batch_size must be an integer >= 1 (--batch-size)"),
    ("empty", "has no samples"),
])
def test_bad_inputs_clear_errors(tmp_path, ckpt, case, expect):
    data = tmp_path / "data"
    args = []
    if case == "wrong-task":
        make_dataset(data, n=2)
        args = ["--task", "vqa"]
    elif case == "batch0":
        make_dataset(data, n=2)
        args = ["--batch-size", "0"]
    elif case == "empty":
        (data / "images").mkdir(parents=True)
        (data / "samples.jsonl").write_text("")
        (data / "meta.json").write_text(json.dumps({"samples_sha256": sha256_file(data / "samples.jsonl")}))
    r = run_cli(ckpt, "--data", data, "--out", tmp_path / "res", *args, "--no-energy")
    assert r.exit_code in (1, 2) and expect in r.output, r.output
    assert not (tmp_path / "res" / "samples.jsonl").exists()


def test_manifest_steps_compacted_for_the_summary():
    from vlmslim.benchmarks.summary import compact_manifest, model_block

    manifest = {"base": {"model": "b"}, "steps": [{"kind": "prune", "params": {"glu": 0.25},
                                                   "kept": list(range(100))}], "census": {}}
    compact = compact_manifest(manifest)
    assert compact["steps"][0]["kept"]["len"] == 100 and len(compact["steps"][0]["kept"]["sha256"]) == 64
    census = {"components": {"language": {"linear": {"nf4": 7, "bf16": 1}}}}
    block = model_block("ckpt/glu25-nf4/", "/abs/ckpt/glu25-nf4", compact, census, "llava", None)
    assert block["name"] == "glu25-nf4" and block["precision"] == "nf4" and not block["is_baseline"]
    assert block["pruning"][0]["params"] == {"glu": 0.25}


def test_config_validates_itself():
    with pytest.raises(ValueError, match="--limit"):
        BenchConfig(model="m", data="d", out="o", limit=0)
    with pytest.raises(ValueError, match="task must be one of"):
        BenchConfig(model="m", data="d", out="o", task="retrieval")


def test_several_models_one_failure_recorded_others_go_on(tmp_path, ckpt, stub_scores):
    data = make_dataset(tmp_path / "data", n=2)
    out = tmp_path / "sweep"
    r = run_cli(ckpt, tmp_path / "no" / "such-model", "--data", data, "--out", out, *FAST)
    assert r.exit_code == 1 and "1 of 2 models failed" in r.output
    assert (out / "tiny-llava" / "summary.json").is_file()
    (failure,) = json.loads((out / "failures.json").read_text())
    assert failure["model"].endswith("such-model") and "does not exist" in failure["message"]


@pytest.mark.slow  # inductor compiles the demo's decode step on the CPU
def test_compiled_bench_records_how_the_step_compiled(tmp_path, ckpt, stub_scores):
    data = make_dataset(tmp_path / "data", n=2)
    out = tmp_path / "res"
    r = run_cli(ckpt, "--data", data, "--out", out, "--batch-size", "2", "--engine", "compiled", *FAST)
    assert r.exit_code == 0, r.output
    start, session = res.read_jsonl(out / "sessions.jsonl")  # the session's start record, then its end record
    assert start["event"] == "start" and session["session"] == start["session"]
    # warm-up and measured batches share one decoder: its step traced once, whole (no CUDA graphs on a CPU)
    assert session["compile_stats"] == {"graphs": 1, "graph_breaks": 0, "cudagraph_skips": 0,
                                        "cudagraph_copied_inputs": 0}
    assert session["tuned_kernels"] is None and session["int4_decode_kernels"] is None  # nothing tuned on a CPU
    s = json.loads((out / "summary.json").read_text())
    assert (s["protocol"]["engine"], s["protocol"]["fused_projections"]) == ("compiled", 2 * 2)  # 2 layers


def test_vqa_task_pins_its_protocol(tmp_path, ckpt, stub_scores):
    data = make_dataset(tmp_path / "data", n=2, task="vqa")
    r = run_cli(ckpt, "--data", data, "--out", tmp_path / "ocr", "--ocr-tokens", "--no-energy")
    assert r.exit_code == 1 and "no sample" in r.output and "ocr_tokens" in r.output
    r = run_cli(ckpt, "--data", data, "--out", tmp_path / "res", "--batch-size", "2", "--bootstrap", "5",
                "--no-energy")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert s["task"] == "vqa" and "vqa_accuracy" in s["metrics"] and s["protocol"]["max_new_tokens"] == 16
    assert s["protocol"]["prompt_example"].endswith(
        "what color is the circle ?\nAnswer the question using a single word or phrase. ASSISTANT:")


@pytest.mark.gpu
@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_bench_on_gpu_measures_memory_roofline_energy(tmp_path, ckpt, device):
    """Run with `pytest -m gpu` on a CUDA machine: the numbers a CPU run cannot produce."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    data = make_dataset(tmp_path / "data", n=4)
    r = run_cli(ckpt, "--data", data, "--out", tmp_path / "res", "--device", device, "--dtype", "float16",
                "--batch-size", "2", "--max-new-tokens", "8", "--bootstrap", "10", "--warmup", "2")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "res" / "summary.json").read_text())
    eff = s["efficiency"]
    assert eff["peak_vram_reserved_mb"] >= eff["peak_vram_mb"] > 0
    assert eff["memory_bandwidth_gb_s"] > 100 and 0 < eff["roofline_fraction"] < 1.5
    assert 0 < eff["ttft_s_p50"] < eff["latency_s_p50"] and eff["decode_ms_per_token"] > 0
    assert eff["energy"]["basis"] == "gpu (measured)"
    wh = eff["energy_wh_per_sample"]
    assert (wh is not None and wh > 0) or (wh is None and eff["energy"]["notes"])  # measured, or flagged
    assert "cuda" in s["environment"]["device"] and s["protocol"]["resolved_dtype"] == "float16"


def test_missing_java_fails_before_generating_and_fallback_is_labelled(tmp_path, ckpt, monkeypatch):
    import shutil as _shutil

    real_which = _shutil.which
    monkeypatch.setattr(_shutil, "which", lambda name, *a, **k: None if name == "java" else real_which(name, *a, **k))
    data = make_dataset(tmp_path / "data", n=2)
    r = run_cli(ckpt, "--data", data, "--out", tmp_path / "res", "--no-energy", "--bootstrap", "5",
                "--max-new-tokens", "4", "--no-bertscore")
    assert r.exit_code == 1 and "java" in r.output and "--allow-no-java" in r.output
    assert not (tmp_path / "res" / "samples.jsonl").exists()
    r = run_cli(ckpt, "--data", data, "--out", tmp_path / "res2", "--no-energy", "--bootstrap", "5",
                "--max-new-tokens", "4", "--allow-no-java", "--no-bertscore")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "res2" / "summary.json").read_text())
    assert "meteor" not in s["metrics"] and "cider" in s["metrics"]
    assert "fallback" in json.dumps(s["metric_notes"])


# ---------------------------------------------------------------- results integrity (issue 12, items 5-8)


@pytest.fixture
def stub_scores(monkeypatch):
    """These tests check what is written where; the stub scores in milliseconds what Java scores in seconds."""
    import vlmslim.benchmarks

    stub = _stub_metrics()
    monkeypatch.setitem(sys.modules, "vlmslim.benchmarks.metrics", stub)
    monkeypatch.setattr(vlmslim.benchmarks, "metrics", stub, raising=False)


def test_checkpoint_key_covers_config_and_processor_files(tmp_path):
    for name, text in (("model.safetensors", "w"), ("config.json", "{}"), ("generation_config.json", "{}"),
                       ("tokenizer_config.json", "{}"), ("chat_template.jinja", "t"), ("vlmslim.json", "{}"),
                       ("README.md", "card")):
        (tmp_path / name).write_text(text)
    key, files = res.checkpoint_sha256(tmp_path)
    assert sorted(files) == ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
                             "tokenizer_config.json"]
    assert res.weight_files(files) == ["model.safetensors"]
    for name in ("config.json", "generation_config.json", "tokenizer_config.json", "chat_template.jinja"):
        before = (tmp_path / name).read_text()
        (tmp_path / name).write_text(before + " ")
        assert res.checkpoint_sha256(tmp_path)[0] != key, name
        (tmp_path / name).write_text(before)
    # The manifest (timestamps) and the model card do not change what the model generates.
    (tmp_path / "vlmslim.json").write_text('{"created": "later"}')
    (tmp_path / "README.md").write_text("another card")
    assert res.checkpoint_sha256(tmp_path)[0] == key


def test_changed_config_json_is_a_different_run(tmp_path, ckpt, stub_scores):
    model_dir = tmp_path / "tiny-llava"
    shutil.copytree(ckpt, model_dir)
    data = make_dataset(tmp_path / "data", n=2)
    out = tmp_path / "res"
    assert run_cli(model_dir, "--data", data, "--out", out, *FAST).exit_code == 0
    rows = (out / "samples.jsonl").read_text()
    config = json.loads((model_dir / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = 0.5  # same weights, another model
    (model_dir / "config.json").write_text(json.dumps(config))
    r = run_cli(model_dir, "--data", data, "--out", out, *FAST)
    assert r.exit_code == 1 and "config.json" in r.output and "new --out" in r.output, r.output
    assert (out / "samples.jsonl").read_text() == rows


def test_second_bench_on_one_out_is_refused_for_the_whole_run(tmp_path, ckpt, stub_scores, monkeypatch):
    """B starting while A scores (A rewrites samples.jsonl) would append rows A's rewrite then drops."""
    data = make_dataset(tmp_path / "data", n=4)
    out = tmp_path / "res"
    real_rewrite, second = res.rewrite_samples, []

    def rewrite_after_b(out_dir, rows):
        if not second:  # A's rewrite (B's own, when B is let in, must not start a third run)
            second.append(None)
            second[0] = run_cli(ckpt, "--data", data, "--out", out, "--limit", "4", *FAST)
        real_rewrite(out_dir, rows)

    monkeypatch.setattr(res, "rewrite_samples", rewrite_after_b)
    bench(ckpt, data, str(out), limit=2, max_new_tokens=6, bootstrap=10, energy=False, progress=False)
    (b,) = second
    assert b.exit_code == 1 and f"PID {os.getpid()}" in b.output and "another --out" in b.output, b.output
    assert len(ids_in(out)) == 2 and not (out.parent / ".res.lock").exists()
    monkeypatch.setattr(res, "rewrite_samples", real_rewrite)
    assert run_cli(ckpt, "--data", data, "--out", out, "--limit", "4", *FAST).exit_code == 0  # now it resumes
    assert sorted(ids_in(out)) == ["s0", "s1", "s2", "s3"]


def test_killed_session_is_recorded_and_counted(tmp_path, ckpt, stub_scores):
    data = make_dataset(tmp_path / "data", n=5)
    out = tmp_path / "res"

    def interrupt_after_two(rows, seen=[]):
        seen.extend(rows)
        if len(seen) >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench(ckpt, data, str(out), max_new_tokens=4, bootstrap=5, energy=False, progress=False,
              on_batch=interrupt_after_two)
    # kill -9 runs no `finally`: drop what the interrupted process wrote at its end (its end record).
    lines = (out / "sessions.jsonl").read_text().splitlines(keepends=True)
    (out / "sessions.jsonl").write_text("".join(lines[:-1]))
    r = run_cli(ckpt, "--data", data, "--out", out, "--max-new-tokens", "4", "--bootstrap", "5", "--no-energy")
    assert r.exit_code == 0, r.output
    rows = res.read_jsonl(out / "samples.jsonl")
    assert len(rows) == 5 and len({r["batch"] for r in rows}) == 5  # batch size 1: five distinct batches
    assert [r["session"] for r in rows] == [0, 0, 1, 1, 1]
    s = json.loads((out / "summary.json").read_text())
    assert s["run"] == {**s["run"], "sessions": 2, "killed_sessions": 1, "completed_sessions": 1, "resumed": True}
    eff = s["efficiency"]
    assert eff["throughput_images_per_s"] == pytest.approx(5 / sum(r["latency_s"] for r in rows))
    sessions = res.read_sessions(out)
    assert [x["killed"] for x in sessions] == [True, False] and sessions[1]["n_generated"] == 3


def test_failed_bench_leaves_nothing_and_the_fixed_rerun_proceeds(tmp_path, ckpt, stub_scores):
    model_dir = tmp_path / "tiny-llava"
    shutil.copytree(ckpt, model_dir, ignore=shutil.ignore_patterns("tokenizer*", "processor_config.json"))
    data = make_dataset(tmp_path / "data", n=2)
    out = tmp_path / "res"
    r = run_cli(model_dir, "--data", data, "--out", out, *FAST)
    assert r.exit_code == 1 and "has no processor" in r.output, r.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data", "tiny-llava"]
    shutil.rmtree(model_dir)
    shutil.copytree(ckpt, model_dir)  # the checkpoint fixed
    r = run_cli(model_dir, "--data", data, "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    assert len(ids_in(out)) == 2


def test_results_dir_without_rows_is_not_a_different_run(tmp_path, ckpt, stub_scores):
    """A dir an earlier failed run left (config.yaml, empty samples.jsonl) holds nothing to mix."""
    data = make_dataset(tmp_path / "data", n=2)
    out = tmp_path / "res"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"checkpoint_sha256": "0" * 64, "dataset_sha256": "x",
                                                     "generation": {"max_new_tokens": 99}}))
    (out / "samples.jsonl").write_text("")
    r = run_cli(ckpt, "--data", data, "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    assert len(ids_in(out)) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["generation"]["max_new_tokens"] == 6


def test_full_disk_mid_bench_is_one_error_and_resumable(tmp_path, ckpt, stub_scores, monkeypatch):
    import errno

    data = make_dataset(tmp_path / "data", n=3)
    out = tmp_path / "res"
    real_append = res.SamplesWriter.append

    def append_then_fill(self, rows):
        if self.rows:  # the second batch finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, rows)

    monkeypatch.setattr(res.SamplesWriter, "append", append_then_fill)
    r = run_cli(ckpt, "--data", data, "--out", out, *FAST)
    assert r.exit_code == 1 and r.output.count("Error:") == 1 and "No space left on device; free space" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # no traceback
    assert ids_in(out) == ["s0"]
    monkeypatch.setattr(res.SamplesWriter, "append", real_append)
    r = run_cli(ckpt, "--data", data, "--out", out, *FAST)
    assert r.exit_code == 0 and sorted(ids_in(out)) == ["s0", "s1", "s2"]


def test_baseline_with_another_protocol_is_refused_unless_allow_mixed(tmp_path, ckpt, stub_scores):
    """README step 4 taken literally (base at batch 8, the others at 1) drew a false speedup: --baseline
    refuses a run whose cost- or quality-relevant protocol differs, naming the key; --allow-mixed records it."""
    data = make_dataset(tmp_path / "data", n=2)
    base = tmp_path / "base"
    assert run_cli(ckpt, "--data", data, "--out", base, *FAST).exit_code == 0
    r = run_cli(ckpt, "--data", data, "--out", tmp_path / "b2", "--batch-size", "2", *FAST, "--baseline", base)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    (line,) = [x for x in r.output.splitlines() if x.startswith("Error: ")]
    assert "batch_size 1 vs 2" in line and "--allow-mixed" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "data"]  # nothing left
    r = run_cli(ckpt, "--data", data, "--out", tmp_path / "b2", "--batch-size", "2", *FAST, "--baseline", base,
                "--allow-mixed")
    assert r.exit_code == 0, r.output
    paired = json.loads((tmp_path / "b2" / "summary.json").read_text())["paired_vs_baseline"]
    assert paired["protocol_differs"] == ["batch_size"]
