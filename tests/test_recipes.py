"""Recipes and `vlmslim sweep`: schema errors with file:line, plans and stamps, every shipped recipe offline
(--dry-run), and on tiny models: a whole sweep, resume, rebuild, failures, and kill -9 at any point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vlmslim.benchmarks.results import read_sessions
from vlmslim.checkpoint import save_checkpoint
from vlmslim.cli import cli
from vlmslim.errors import RecipeError
from vlmslim.manifest import new_manifest
from vlmslim.recipes import SHIPPED, find_recipe, load_recipe, make_plan, stamps
from vlmslim.testing import tiny_llava, tiny_model

REPO = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
model: {model}
device: cpu
data:
  synthetic: {{n: 4, seed: 3, size: 32}}
calibration:
  synthetic: {{n: 4, seed: 7, size: 32}}
bench: {{batch_size: 2, bootstrap: 10, max_new_tokens: 6, energy: false, bertscore_model: null}}
figures: {{metric: cider, spotcheck: 2}}
variants:
  - name: base
  - name: glu50
    steps: [{{prune: {{glu: {glu}}}}}]
  - name: glu50-int8
    source: glu50
    steps: [{{quantize: {{recipe: int8}}}}]
  - name: tokens4
    steps: [{{tokens: {{image_tokens: 4}}}}]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def sweep(*args) -> object:
    return CliRunner().invoke(cli, ["sweep", *map(str, args)])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    model, processor = tiny_model("llava")
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("m") / "tiny-llava",
                           new_manifest("tiny-llava", model.config))


# ---------------------------------------------------------------- schema: one line, file and line number


BASE = "model: demo\ndata: {synthetic: {n: 4}}\nvariants:\n  - name: base\n"


@pytest.mark.parametrize("text, expect", [
    (BASE + "  - name: a\n    steps:\n      - prune: {glu_ratio: 0.3}\n",
     "x.yaml:7: variants[1].steps[0]: unknown key 'glu_ratio' for prune (known: glu, heads, head_mode, "),
    (BASE + "  - name: a\n    steps:\n      - prune:\n          glu: 1.5\n",
     "x.yaml:7: variants[1].steps[0]: prune: --glu must be a fraction removed in [0, 1), got 1.5"),
    (BASE + "  - name: a\n    steps: [{prun: {glu: 0.3}}]\n",
     "x.yaml:6: variants[1].steps[0]: unknown step 'prun' (known: prune, quantize, recover, tokens)"),
    (BASE + "  - name: a\n    steps: [{recover: {steps: 5}}]\n",
     "x.yaml:6: variants[1].steps[0]: recover trains on recovery data: add a top-level `recovery:`"),
    ("recovery: {synthetic: {n: 4, seed: 1}}\n" + BASE + "  - name: a\n    steps: [{recover: {steps: 0}}]\n",
     "x.yaml:7: variants[1].steps[0]: recover: --steps must be an integer >= 1, got 0"),
    ("recovery: {synthetic: {n: 4, seed: 1}}\n" + BASE + "  - name: a\n    steps: [{recover: {device: cuda}}]\n",
     "x.yaml:7: variants[1].steps[0]: unknown key 'device' for recover (known: method, steps,"),
    (BASE + "  - name: a\n    steps: [{quantize: {recipe: nf4, int8_threshold: 6}}]\n",
     "x.yaml:6: variants[1].steps[0]: quantize: int8_threshold (--int8-threshold) does not apply to the nf4 recipe"),
    (BASE + "  - name: a\n    steps: [{quantize: {target: language}}]\n",
     "x.yaml:6: variants[1].steps[0]: quantize needs recipe"),
    (BASE + "  - name: a\n    steps: [{tokens: {image_tokens: 16}}, {prune: {glu: 0.3}}]\n",
     "x.yaml:6: variants[1].steps[1]: tokens applies at bench time and must be the last step"),
    (BASE + "  - name: a\n    steps: [{prune: {drop_layers: 1}}]\n",
     "x.yaml:6: variants[1].steps[0]: prune needs calibration data (--drop-layers N (layer redundancy"),
    (BASE + "  - name: a\n    source: b\n", "x.yaml:6: variants[1]: source 'b' is not a variant defined above (base)"),
    (BASE + "  - name: base\n", "x.yaml:5: variants[1]: variant name 'base' is used twice"),
    (BASE + "  - name: ../up\n", "x.yaml:5: variants[1]: name must be a directory-safe name"),
    (BASE + "bench:\n  bootstrap: 5\n  batch_size: 0\n", "x.yaml:7: bench: batch_size must be an integer >= 1 (--batch-size), got 0"),
    (BASE + "bench: {device: cuda}\n", "x.yaml:5: bench: 'device' is not a bench setting here: it comes from "
                                       "the top-level `device`"),
    (BASE + "bench:\n  batchsize: 8\n", "x.yaml:6: bench: unknown key 'batchsize' for bench (known: task, limit"),
    (BASE + "glu: 0.3\n", "x.yaml:5: unknown key 'glu' for a recipe (known: name, description, model"),
    (BASE + "baseline: nope\n", "x.yaml:5: baseline: 'nope' is not a variant (variants: base)"),
    ("model: demo\nvariants: [{name: base}]\n", "x.yaml:1: missing `data`"),
    ("model: demo\ndata: {download: {name: coco}}\nvariants: [{name: b}]\n",
     "x.yaml:2: data.download: name must be one of coco-captions, textvqa, vqaonline, got 'coco'"),
    ("model: demo\ndata: {synthetic: {n: 0}}\nvariants: [{name: b}]\n", "x.yaml:2: data.synthetic: --n must be >= 1"),
    ("model: demo\nmodel: x\n", "x.yaml:2: model: key given twice"),
    ("model: [demo\n", "x.yaml:2: not valid YAML"),
    ("model: random:llava-1.5-7b\ndata: d\nvariants: [{name: b}]\n", "x.yaml:1: model: random-weight models"),
])
def test_schema_errors_are_one_line_with_file_line_and_key(tmp_path, text, expect):
    recipe = write(tmp_path / "x.yaml", text)
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe)
    assert str(e.value).replace(str(tmp_path) + "/", "").startswith(expect), str(e.value)


@pytest.mark.slow  # a subprocess CLI run (~5.7 s)
def test_sweep_cli_schema_error_is_one_line_and_writes_nothing(tmp_path):
    write(tmp_path / "x.yaml", BASE + "  - name: a\n    steps:\n      - prune: {glu_ratio: 0.3}\n")
    res = subprocess.run([sys.executable, "-m", "vlmslim", "sweep", "x.yaml", "--out", "out"], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(
        "Error: x.yaml:7: variants[1].steps[0]: unknown key 'glu_ratio' for prune (known: glu, heads,")
    assert not (tmp_path / "out").exists()


def test_set_overrides_are_yaml_and_named_in_errors(tmp_path):
    recipe = write(tmp_path / "x.yaml", BASE)
    r = load_recipe(recipe, ["bench.batch_size=8", "data.synthetic.n=3", "device=cuda:1"])
    assert r.bench == {"batch_size": 8} and r.data.options == {"n": 3} and r.device == "cuda:1"
    with pytest.raises(RecipeError, match=r"x.yaml \(--set bench.batch_size=none\): bench: batch_size must be"):
        load_recipe(recipe, ["bench.batch_size=none"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(recipe, ["bench.batch_size"])
    res = sweep(recipe, "--out", tmp_path / "o", "--only", "nope", "--dry-run")
    assert res.exit_code == 1 and "--only: unknown variant(s) nope" in res.output


# ---------------------------------------------------------------- shipped recipes, offline


SEEDS = ("seed000-llava-coco", "seed001-smolvlm-textvqa", "seed002-qwen-coco", "seed004-llava-vqaonline-grid")


@pytest.mark.parametrize("name", ["demo", *SEEDS])
def test_every_shipped_recipe_passes_dry_run_offline(tmp_path, name):
    res = sweep(name, "--out", tmp_path / "out", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "will run" in res.output and "report" in res.output
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_seed_recipes_carry_the_seeds_settings():
    r = {n: load_recipe(find_recipe(n)) for n in SEEDS}
    assert set(SHIPPED) == {"demo", *SEEDS}
    s0 = r["seed000-llava-coco"]
    assert s0.model == "llava-hf/llava-1.5-7b-hf" and s0.data.options == {"name": "coco-captions", "split": "val",
                                                                       "limit": 100, "seed": 0}
    assert [(v.name, [s.config.target for s in v.steps]) for v in s0.variants] == [
        ("fp16", []), ("int8", ["language"]), ("int8-vision", ["vision"])]
    assert s0.bench["energy"] is True
    s1 = r["seed001-smolvlm-textvqa"]
    assert s1.model == "HuggingFaceTB/SmolVLM-Instruct" and s1.data.options["name"] == "textvqa"
    assert "dtype" not in s1.bench  # as saved (bfloat16): a re-cast of a saved bnb checkpoint is partial
    s2 = r["seed002-qwen-coco"]
    assert s2.model == "Qwen/Qwen2.5-VL-3B-Instruct" and s2.data.options == {
        "name": "coco-captions", "split": "val", "limit": 5000, "seed": 42}
    assert s2.bench["max_new_tokens"] == 40 and s2.variant("int8").steps[0].config.target == "all"
    s4 = r["seed004-llava-vqaonline-grid"]
    assert s4.data.options == {"name": "vqaonline", "split": "train"}  # 665 rows, as the seed evaluated

    def cell(v):  # (glu, heads) pruned along the chain, quantization recipe
        steps = [*(s4.variant(v.source).steps if v.source else ()), *v.steps]
        prune = next((s.config for s in steps if s.kind.name == "prune"), None)
        quant = next((s.config.recipe.name for s in steps if s.kind.name == "quantize"), None)
        return (prune.glu, prune.heads) if prune else (0.0, 0.0), quant

    assert sorted(map(cell, s4.variants), key=str) == sorted(  # never fp4 by accident: nf4 is asked for
        [(p, q) for p in [(0.0, 0.0), (0.25, 0.0), (0.5, 0.0), (0.0, 0.25)] for q in (None, "int8", "nf4")], key=str)


# ---------------------------------------------------------------- plans and stamps


def test_plan_shares_identical_chains_and_stamps_follow_inputs(tmp_path, tiny_dir):
    text = TINY.format(model=tiny_dir, glu=0.5) + "  - name: same-as-glu50\n    steps: [{prune: {glu: 0.5}}]\n"
    plan = make_plan(load_recipe(write(tmp_path / "r.yaml", text)), tmp_path / "out")
    keys = list(plan.artifacts)
    assert keys == ["data:eval", "checkpoint:glu50", "checkpoint:glu50-int8", "bench:base", "bench:glu50",
                    "bench:glu50-int8", "bench:tokens4", "bench:same-as-glu50", "report"]  # one glu50 checkpoint
    assert plan.artifacts["bench:same-as-glu50"].spec.model == str(tmp_path / "out" / "checkpoints" / "glu50")
    assert "data:calibration" not in keys  # no step needs it
    other = make_plan(load_recipe(write(tmp_path / "r2.yaml", TINY.format(model=tiny_dir, glu=0.25))), tmp_path / "out")
    changed = {k for k in other.artifacts if other.artifacts[k].stamp != plan.artifacts[k].stamp}
    # tokens4 is benched on the base model, paired with the unchanged base bench: not rebuilt
    assert changed == {"checkpoint:glu50", "checkpoint:glu50-int8", "bench:glu50", "bench:glu50-int8", "report"}


def test_stamp_status_covers_kills_before_and_after_the_rename(tmp_path):
    art, marker = tmp_path / "ckpt", tmp_path / "ckpt" / "vlmslim.json"
    payload = {"kind": "prune", "config": {"glu": 0.3}, "input": "x"}
    s = stamps.digest(payload)
    assert stamps.status(art, s, marker, payload) == (stamps.RUN, "")
    stamps.start(art, s, marker, payload)  # killed before the step wrote anything
    assert stamps.status(art, s, marker, payload)[0] == stamps.RUN
    art.mkdir()
    marker.write_text("{}")  # the atomic rename happened, then a kill before `finish`
    assert stamps.status(art, s, marker, payload) == (stamps.DONE, "finished just before an interruption")
    stamps.finish(art, s, marker, payload)
    assert stamps.status(art, s, marker, payload) == (stamps.DONE, "")
    new = {**payload, "config": {"glu": 0.4}}
    assert stamps.status(art, stamps.digest(new), marker, new) == (stamps.REBUILD, "config.glu: 0.3 -> 0.4")
    # an old artifact under the name when a rebuild starts does not count as the rebuilt one
    stamps.start(art, stamps.digest(new), marker, new)
    assert stamps.status(art, stamps.digest(new), marker, new)[0] == stamps.RUN


# ---------------------------------------------------------------- --device auto


def test_device_auto_means_cuda_if_available(monkeypatch):
    import torch

    from vlmslim.loading import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_prune_and_quantize_accept_device_auto(tmp_path, tiny_dir):
    res = CliRunner().invoke(cli, ["prune", str(tiny_dir), "--out", str(tmp_path / "p"), "--glu", "0.5",
                                   "--device", "auto"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["quantize", str(tmp_path / "p"), "--out", str(tmp_path / "q"), "--bits", "8",
                                   "--device", "auto"])  # was: a RuntimeError traceback from torch.device("auto")
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "q" / "vlmslim.json").read_text())
    assert [s["kind"] for s in manifest["steps"]] == ["prune", "quantize"]


# ---------------------------------------------------------------- whole sweeps on a tiny model


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, tiny_dir):
    """(recipe, out, first run's CLI result) of the TINY recipe: base, a GLU cut, its int8, 4 image tokens."""
    root = tmp_path_factory.mktemp("sweep")
    recipe = write(root / "tiny.yaml", TINY.format(model=tiny_dir, glu=0.5))
    res = sweep(recipe, "--out", root / "out")
    return recipe, root / "out", res


@pytest.mark.slow  # ~1 min: two checkpoints and four benches of a tiny model
def test_tiny_sweep_builds_everything_through_the_library_steps(tiny_sweep):
    recipe, out, res = tiny_sweep
    assert res.exit_code == 0, res.output
    for name in ("base", "glu50", "glu50-int8", "tokens4"):
        summary = json.loads((out / "results" / name / "summary.json").read_text())
        assert summary["model"]["name"] == name and summary["n_samples"] == 4
        assert summary["protocol"]["batch_size"] == 2 and summary["protocol"]["max_new_tokens"] == 6
        assert (summary["paired_vs_baseline"] is None) == (name == "base")
    glu = json.loads((out / "checkpoints" / "glu50" / "vlmslim.json").read_text())
    assert glu["steps"][-1]["params"]["glu"] == 0.5
    int8 = json.loads((out / "checkpoints" / "glu50-int8" / "vlmslim.json").read_text())
    assert [s["kind"] for s in int8["steps"]] == ["prune", "quantize"]  # chained on glu50's checkpoint
    assert int8["census"]["components"]["language"]["linear"] == {"int8": 14}
    tokens = json.loads((out / "results" / "tokens4" / "summary.json").read_text())
    assert tokens["model"]["token_reduction"] == {"image_tokens": 4, "method": "pool", "seed": 0}
    assert (out / "figures" / "frontier_size.png").exists() and (out / "figures" / "table.md").exists()
    assert "Δ CIDEr-D vs base [paired 95% CI]" in res.output  # the table, printed
    assert json.loads((out / "failures.json").read_text()) == []
    done = [e["step"] for e in events(out) if e["event"] == "done"]
    assert sorted(done) == sorted(["data:eval", "checkpoint:glu50", "checkpoint:glu50-int8", "bench:base",
                                   "bench:glu50", "bench:glu50-int8", "bench:tokens4", "report"])


@pytest.mark.slow
def test_summary_csv_metric_columns_read_as_floats(tiny_sweep):
    pandas = pytest.importorskip("pandas")
    from vlmslim.benchmarks.tasks import TASKS

    _, out, _ = tiny_sweep
    for name in ("base", "glu50"):
        df = pandas.read_csv(out / "results" / name / "summary.csv")
        columns = [f"{k}{suffix}" for k in TASKS["caption"].metric_keys
                   for suffix in ("", "_ci_lo", "_ci_hi", "_delta", "_delta_ci_lo", "_delta_ci_hi")]
        assert {c: str(df[c].dtype) for c in columns} == {c: "float64" for c in columns}
        assert df["cider_delta"].isna().all() == (name == "base")


@pytest.mark.slow
def test_rerun_skips_everything_and_a_change_rebuilds_only_what_depends_on_it(tiny_sweep, tmp_path):
    recipe, first, _ = tiny_sweep
    import shutil

    out = tmp_path / "out"
    shutil.copytree(first, out)  # the other tests keep the first sweep
    before = {p: p.stat().st_mtime_ns for p in out.glob("results/*/summary.json")}
    res = sweep(recipe, "--out", out)
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in before} == before
    second = events(out)[len(events(first)):]
    assert {e["event"] for e in second} == {"skip"} and len(second) == 8

    # GLU 0.5 -> 0.25 and another bootstrap: glu50 and its int8 are rebuilt; base / tokens4 keep their
    # generations and are only re-scored.
    changed = write(tmp_path / "changed.yaml", TINY.format(model=load_recipe(recipe).model, glu=0.25)
                    .replace("bootstrap: 10", "bootstrap: 12"))
    res = sweep(changed, "--out", out, "--dry-run")
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines()[2:]}
    assert "will rebuild (config.glu: 0.5 -> 0.25)" in lines["checkpoint:glu50"]
    assert "re-scores the kept generations" in lines["bench:base"] and "done" in lines["data:eval"]
    assert "re-scores" not in lines["bench:glu50"]
    n = len(events(out))
    res = sweep(changed, "--out", out)
    assert res.exit_code == 0, res.output
    ran = {e["step"] for e in events(out)[n:] if e["event"] == "done"}
    assert ran == {"checkpoint:glu50", "checkpoint:glu50-int8", "bench:base", "bench:glu50", "bench:glu50-int8",
                   "bench:tokens4", "report"}
    # sessions.jsonl holds a start and an end record per session: count sessions, not lines
    sessions = {name: len(read_sessions(out / "results" / name)) for name in ("base", "glu50")}
    assert sessions == {"base": 1, "glu50": 1}  # base re-scored its rows; glu50 started over on the new weights
    glu = json.loads((out / "checkpoints" / "glu50" / "vlmslim.json").read_text())
    assert glu["steps"][-1]["params"]["glu"] == 0.25
    assert json.loads((out / "results" / "base" / "summary.json").read_text())["protocol"]["bootstrap"] == 12


RECOVER = """\
name: tiny-recover
model: {model}
device: cpu
data:
  synthetic: {{n: 4, seed: 3, size: 32}}
recovery:
  synthetic: {{n: 4, seed: {seed}, size: 32}}
bench: {{batch_size: 2, bootstrap: 10, max_new_tokens: 6, energy: false, bertscore_model: null}}
figures: {{metric: cider, spotcheck: 2}}
variants:
  - name: base
  - name: glu50
    steps: [{{prune: {{glu: 0.5}}}}]
  - name: glu50-kd
    source: glu50
    steps: [{{recover: {{steps: 2, batch_size: 2, max_new_tokens: 4, lr: 0.001}}}}]
"""


@pytest.mark.slow  # a prune, a 2-step recovery and three benches of a tiny model (~40 s)
def test_recover_step_distils_toward_the_recipe_model_on_the_recovery_set(tmp_path, tiny_dir):
    out = tmp_path / "out"
    res = sweep(write(tmp_path / "r.yaml", RECOVER.format(model=tiny_dir, seed=5)), "--out", out)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "checkpoints" / "glu50-kd" / "vlmslim.json").read_text())
    assert [s["kind"] for s in manifest["steps"]] == ["prune", "recover"]
    step = manifest["steps"][-1]
    assert step["teacher"]["path"] == str(tiny_dir) and step["params"]["steps"] == 2
    assert step["trained_on"]["n_samples"] == 4 and len(step["trained_on"]["image_hashes"]) == 4
    assert (out / "data" / "recovery" / "samples.jsonl").is_file()
    summary = json.loads((out / "results" / "glu50-kd" / "summary.json").read_text())
    assert [s["kind"] for s in summary["model"]["pruning"]] == ["prune", "recover"]
    done = {e["step"] for e in events(out) if e["event"] == "done"}
    assert {"data:recovery", "checkpoint:glu50", "checkpoint:glu50-kd", "bench:glu50-kd"} <= done


@pytest.mark.slow
def test_recovery_set_that_is_the_eval_set_fails_that_variant_only(tmp_path, tiny_dir):
    out = tmp_path / "out"  # recovery seed 3 = the eval set's seed: the same images
    res = sweep(write(tmp_path / "r.yaml", RECOVER.format(model=tiny_dir, seed=3)), "--out", out)
    assert res.exit_code == 1
    failures = json.loads((out / "failures.json").read_text())
    assert [f["step"] for f in failures] == ["checkpoint:glu50-kd", "bench:glu50-kd"]
    assert "images of the held-out set" in failures[0]["message"]
    assert not (out / "checkpoints" / "glu50-kd").exists()
    assert (out / "results" / "glu50" / "summary.json").is_file()


@pytest.mark.slow
def test_a_failing_variant_is_recorded_its_dependants_skipped_and_the_rest_finish(tmp_path, tiny_dir):
    text = TINY.format(model=tiny_dir, glu=0.5).split("  - name: glu50\n")[0] + (
        "  - {name: broken, steps: [{prune: {glu: 0.9, round_to: 512}}]}\n"
        "  - {name: broken-int8, source: broken, steps: [{quantize: {recipe: int8}}]}\n"
        "  - {name: tokens4, steps: [{tokens: {image_tokens: 4}}]}\n")
    res = sweep(write(tmp_path / "r.yaml", text), "--out", tmp_path / "out")
    assert res.exit_code == 1 and "4 step(s) failed" in res.output
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert [(f["step"], f["error"]) for f in failures] == [
        ("checkpoint:broken", "PruningError"), ("checkpoint:broken-int8", "Skipped"), ("bench:broken", "Skipped"),
        ("bench:broken-int8", "Skipped")]
    assert failures[0]["message"].startswith("--glu 0.9: width 256 has no multiple of --round-to 512")
    assert (tmp_path / "out" / "results" / "tokens4" / "summary.json").exists()
    assert (tmp_path / "out" / "figures" / "table.md").exists()  # over the results that exist
    assert not (tmp_path / "out" / "checkpoints" / "broken").exists()


@pytest.mark.slow  # ~2 min: three killed runs and a final one, each a fresh process
def test_kill_9_at_any_point_then_rerun_runs_no_step_twice(tmp_path, tiny_dir):
    recipe = write(tmp_path / "r.yaml", TINY.format(model=tiny_dir, glu=0.5))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vlmslim", "-q", "sweep", str(recipe), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kills = 0
    # Kill as soon as an artifact appears under its final name: inside the window between the step's atomic
    # rename and its `done` stamp (data, checkpoint), and in the middle of a bench.
    for appears in (out / "data" / "eval" / "meta.json", out / "checkpoints" / "glu50" / "vlmslim.json",
                    out / "results" / "base" / "samples.jsonl"):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not appears.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 3
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    log = events(out)
    steps = dict.fromkeys(e["step"] for e in log)
    assert len(steps) == 8
    for step in steps:
        mine = [e["event"] for e in log if e["step"] == step]
        assert mine.count("done") == 1, (step, mine)  # finished exactly once
        assert "start" not in mine[mine.index("done"):], (step, mine)  # and never started again after that
    for name in ("base", "glu50", "glu50-int8", "tokens4"):
        assert json.loads((out / "results" / name / "summary.json").read_text())["n_samples"] == 4


# ---------------------------------------------------------------- the seed recipes on tiny stand-ins


def _standin(kind: str, root: Path) -> Path:
    if kind == "llava-256":  # 4-bit needs widths % 64 after cutting a KV group: hidden 256, 8 heads of 32
        model, processor = tiny_llava(hidden=256, intermediate=512, heads=8, kv_heads=4)
    else:
        model, processor = tiny_model(kind)
    return save_checkpoint(model, processor, root / kind, new_manifest(f"tiny-{kind}", model.config))


def _source(name: str, root: Path) -> Path:
    """A tiny local copy of the hub set in its real layout (the builders of test_data.py)."""
    from test_data import coco_source, textvqa_source, vqaonline_source

    return {"coco-captions": lambda: coco_source(root / "coco", n=3), "textvqa": lambda: textvqa_source(root / "tvqa"),
            "vqaonline": lambda: vqaonline_source(root / "vqaonline")}[name]()


# Seed 002's Qwen2.5-VL processor needs torchvision (absent here): a tiny LLaVA stands in for its model.
STANDINS = {"seed000-llava-coco": "llava", "seed001-smolvlm-textvqa": "idefics3", "seed002-qwen-coco": "llava",
            "seed004-llava-vqaonline-grid": "llava-256"}
QUANTIZED = {  # variant -> the components whose Linear layers the recipe makes int8 / nf4
    "seed000-llava-coco": {"int8": {"language"}, "int8-vision": {"vision"}},
    "seed001-smolvlm-textvqa": {"int8-text": {"language"}, "int8-vision": {"vision"}},
    "seed002-qwen-coco": {"int8": {"vision", "projector", "language"}, "int8-vit": {"vision"}},
}


@pytest.mark.slow  # 1-5 min each: every variant of the seed's study, on a tiny model and 2-5 samples
@pytest.mark.parametrize("name", SEEDS)
def test_seed_recipe_runs_end_to_end_on_a_tiny_stand_in(tmp_path, name, minilm):
    recipe = load_recipe(find_recipe(name))
    model = _standin(STANDINS[name], tmp_path)
    source = _source(recipe.data.options["name"], tmp_path)
    res = sweep(name, "--out", tmp_path / "out", "--set", f"model={model}", "--set", f"data.download.source={source}",
                "--set", "bench.max_new_tokens=6", "--set", "bench.energy=false", "--set", "bench.bootstrap=10",
                "--set", f"bench.bertscore_model={minilm}")
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    meta = json.loads((out / "data" / "eval" / "meta.json").read_text())
    assert meta["split"] == recipe.data.options["split"]  # vqaonline: train, as seed 004 evaluated
    for v in recipe.variants:
        summary = json.loads((out / "results" / v.name / "summary.json").read_text())
        assert summary["n_samples"] == meta["counts"]["samples"] and summary["task"] == meta["task"]
        assert summary["protocol"]["dtype"] == recipe.bench.get("dtype", "as saved")
    for variant, components in QUANTIZED.get(name, {}).items():
        census = json.loads((out / "checkpoints" / variant / "vlmslim.json").read_text())["census"]["components"]
        assert {c for c, v in census.items() if "int8" in v["linear"]} == components, variant
    if name.startswith("seed004"):
        census = json.loads((out / "checkpoints" / "heads25-nf4" / "vlmslim.json").read_text())
        assert [s["kind"] for s in census["steps"]] == ["prune", "quantize"]
        assert set(census["census"]["components"]["language"]["linear"]) == {"nf4"}
        summary = json.loads((out / "results" / "glu50-nf4" / "summary.json").read_text())
        assert {"rouge_l", "meteor", "bertscore_f1"} <= set(summary["metrics"])
    assert (out / "figures" / "table.md").exists()
