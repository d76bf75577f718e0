"""Data-parallel bench (`--processes N`, `accelerate launch`) and device maps (`--device-map`, `--max-memory`).

The multi-process tests run the real accelerate launcher in a subprocess (gloo on the CPU) on the tiny
LLaVA and a VQA set: VQA accuracy is pure Python, so scoring needs neither Java nor a stub across processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlmslim.benchmarks import results as res
from vlmslim.benchmarks.parallel import Ranks, combine_sessions, shard_batches
from vlmslim.checkpoint import save_checkpoint
from vlmslim.cli import cli
from vlmslim.io import sha256_file
from vlmslim.loading import build_random_model, load_model, model_devices, parse_max_memory, placement_summary
from vlmslim.manifest import new_manifest
from vlmslim.testing import tiny_llava, tiny_model

REPO = Path(__file__).resolve().parents[1]
FAST = ["--max-new-tokens", "4", "--bootstrap", "5", "--no-energy", "--warmup", "0"]
# What differs between two runs of the same greedy generations: clocks, batch/session ids, memory.
VOLATILE = {"latency_s", "ttft_s", "preprocess_s", "decode_s", "decode_ms_per_token", "batch", "session"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model, processor = tiny_model("llava")
    return str(save_checkpoint(model, processor, tmp_path_factory.mktemp("m") / "tiny-llava",
                               new_manifest("tiny-llava", model.config)))


def make_vqa(root: Path, n: int) -> str:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"images/{i}.png", "task": "vqa", "question": "what color is the circle ?",
                     "references": ["red"] * 5 + ["a"] * 5, "extras": {}})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "meta.json").write_text(json.dumps({"dataset": "tiny-vqa", "samples_sha256": sha256_file(root / "samples.jsonl")}))
    return str(root)


def run_module(*args, timeout=300) -> subprocess.CompletedProcess:
    """`python -m …` in a fresh process, offline, with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def content(out: Path) -> list[dict]:
    """samples.jsonl rows without clocks and ids, sorted by sample id."""
    rows = res.read_jsonl(out / "samples.jsonl")
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in rows), key=lambda r: r["id"])


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# ---------------------------------------------------------------- units


def test_batches_go_round_robin_and_cover_the_todo_list_once():
    todo = list(range(7))
    shares = [shard_batches(todo, 2, Ranks(r, 3)) for r in range(3)]
    assert shares[0] == [(0, [0, 1]), (3, [6])] and shares[1] == [(1, [2, 3])] and shares[2] == [(2, [4, 5])]
    assert sorted(x for share in shares for _, b in share for x in b) == todo
    assert shard_batches(todo, 3, Ranks()) == [(0, [0, 1, 2]), (1, [3, 4, 5]), (2, [6])]


def test_merge_rank_files_orders_dedupes_and_drops_torn_tails(tmp_path):
    order = {f"s{i}": i for i in range(6)}
    res.rewrite_samples(tmp_path, [{"id": "s0"}, {"id": "s2"}])
    (tmp_path / "samples.rank1.jsonl").write_text('{"id": "s3"}\n{"id": "s2"}\n{"id": "s5", "pre')  # torn tail
    (tmp_path / "samples.rank0.jsonl").write_text('{"id": "s4"}\n{"id": "s1"}\n')
    rows = res.merge_rank_files(tmp_path, order)
    assert [r["id"] for r in rows] == ["s0", "s2", "s1", "s3", "s4"]  # old rows first, new ones in sample order
    assert [r["id"] for r in res.read_jsonl(tmp_path / "samples.jsonl")] == ["s0", "s2", "s1", "s3", "s4"]
    assert not list(tmp_path.glob("samples.rank*"))
    assert res.merge_rank_files(tmp_path, order) == rows  # nothing left to merge: unchanged


def test_combined_session_sums_counts_and_keeps_each_rank():
    def part(rank, n, peak, pass_s):
        return {"rank": rank, "session": 3, "environment": {"device": f"cuda:{rank} (H100)", "torch": "x"},
                "n_generated": n, "n_skipped": 0, "completed": True, "pass_s": pass_s, "peak_vram_mb": peak,
                "peak_vram_mb_per_device": {f"cuda:{rank}": peak}, "peak_rss_mb": 100.0 + rank,
                "energy": {"gpu_wh": 1.0, "cpu_wh": 0.5, "ram_wh": 0.1, "duration_s": pass_s, "note": None}}

    s = combine_sessions([part(0, 3, 500.0, 2.0), part(1, 2, 700.0, 3.0)])
    assert s["n_generated"] == 5 and s["pass_s"] == 3.0 and s["peak_vram_mb"] == 700.0
    assert s["peak_vram_mb_per_device"] == {"cuda:0": 500.0, "cuda:1": 700.0}
    assert s["environment"]["processes"] == 2 and "rank 1: cuda:1" in s["environment"]["device"]
    assert s["energy"]["gpu_wh"] == 2.0 and s["energy"]["cpu_wh"] == 1.0 and len(s["ranks"]) == 2


def test_max_memory_parsing_and_refusals():
    assert parse_max_memory("0=20GiB, cpu=60GiB") == {0: "20GiB", "cpu": "60GiB"}
    for bad in ("gpu0=2GiB", "0:2GiB", "0=lots", ""):
        with pytest.raises(ValueError, match="--max-memory"):
            parse_max_memory(bad)


@pytest.mark.parametrize("args, expect", [
    (["--processes", "2", "--device-map", "auto"], "use one or the other"),
    (["--processes", "2", "--device", "cuda:1"], "names one GPU"),
    (["--max-memory", "cpu=1GiB"], "--max-memory limits a --device-map"),
    (["--device-map", "sequential", "--device", "cuda:1"], "leave --device cuda:1 out"),
    (["--device-map", "auto", "--quant", "nf4"], "quantize first"),
    (["--processes", "0"], "--processes must be >= 1"),
])
def test_bad_combinations_are_one_line_errors(tmp_path, ckpt, args, expect):
    data = make_vqa(tmp_path / "data", 2)
    r = CliRunner().invoke(cli, ["bench", ckpt, "--data", data, "--out", str(tmp_path / "o"), *FAST, *args])
    assert r.exit_code != 0 and expect in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) <= 3
    assert not (tmp_path / "o").exists()


def test_random_weights_device_map_refusals(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_llava()[0].config.to_dict()))
    base = ["bench", str(config), "--random-weights", "--out", str(tmp_path / "a"), "--dtype", "float32"]
    r = CliRunner().invoke(cli, [*base, "--device-map", "sequential", "--glu", "0.5"])
    assert r.exit_code == 2 and "unpruned, unquantized" in r.output
    r = CliRunner().invoke(cli, [*base, "--processes", "2"])
    assert r.exit_code == 2 and "architecture-only run has none" in r.output


# ---------------------------------------------------------------- device maps on the CPU


def test_device_map_on_the_cpu_gives_the_plain_greedy_tokens(tmp_path, ckpt):
    """On a CPU-only machine every strategy puts everything on the CPU: same weights, same greedy tokens."""
    plain, processor = load_model(ckpt, device="cpu")
    mapped, _ = load_model(ckpt, device_map="sequential", max_memory=parse_max_memory("cpu=2GiB"))
    assert model_devices(mapped) == ["cpu"]
    inputs = processor(images=Image.new("RGB", (32, 32), "red"), text="<image> what color", return_tensors="pt")
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        assert torch.equal(plain.generate(**inputs, **kw), mapped.generate(**inputs, **kw))

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_llava()[0].config.to_dict()))
    a = build_random_model(str(config), dtype="float32", device="cpu")
    b = build_random_model(str(config), dtype="float32", device="cpu", device_map="auto",
                           max_memory=parse_max_memory("cpu=2GiB"))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_bench_with_device_map_records_it(tmp_path, ckpt):
    data = make_vqa(tmp_path / "data", 2)
    plain, mapped = tmp_path / "plain", tmp_path / "mapped"
    assert CliRunner().invoke(cli, ["bench", ckpt, "--data", data, "--out", str(plain), *FAST]).exit_code == 0
    r = CliRunner().invoke(cli, ["bench", ckpt, "--data", data, "--out", str(mapped), *FAST,
                                 "--device-map", "sequential", "--max-memory", "cpu=2GiB"])
    assert r.exit_code == 0, r.output
    s = summary(mapped)
    assert s["protocol"]["device_map"] == "sequential" and s["protocol"]["max_memory"] == "cpu=2GiB"
    assert list(s["protocol"]["placement"]) == ["cpu"] and s["environment"]["processes"] == 1
    assert content(mapped) == content(plain)


def test_compiled_engine_refused_for_a_model_spanning_devices(tmp_path, ckpt, monkeypatch):
    import vlmslim.benchmarks.run as run

    def spread(*args, **kwargs):  # what from_pretrained returns for a model split between a GPU and the CPU
        model, processor = tiny_model("llava")
        model.hf_device_map = {"model": 0, "lm_head": "cpu"}
        return model, processor

    monkeypatch.setattr(run, "load_model", spread)
    data = make_vqa(tmp_path / "data", 2)
    r = CliRunner().invoke(cli, ["bench", ckpt, "--data", data, "--out", str(tmp_path / "c"), *FAST,
                                 "--device-map", "auto", "--engine", "compiled"])
    assert r.exit_code == 1 and "spans cpu, cuda:0" in r.output and "--engine eager" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "c").exists()


def test_random_weights_bench_with_device_map_on_the_cpu(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_llava()[0].config.to_dict()))
    out = tmp_path / "arch"
    r = CliRunner().invoke(cli, ["bench", str(config), "--random-weights", "--out", str(out), "--device", "cpu",
                                 "--dtype", "float32", "--max-new-tokens", "4", "--device-map", "sequential",
                                 "--max-memory", "cpu=2GiB"])
    assert r.exit_code == 0, r.output
    s = summary(out)
    assert s["protocol"]["device_map"] == "sequential" and list(s["placement"]) == ["cpu"]
    assert s["efficiency"]["decode_ms_per_token"] > 0


# ---------------------------------------------------------------- several processes


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, ckpt):
    data = make_vqa(tmp_path / "data", 5)
    one, two = tmp_path / "one", tmp_path / "two"
    r = run_module("vlmslim", "bench", ckpt, "--data", data, "--out", one, *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    # The real launcher, as a user types it (--multi_gpu = accelerate's torchrun launcher; gloo on the CPU).
    r = run_module("accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                   "0", "-m", "vlmslim", "bench", ckpt, "--data", data, "--out", two, *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    assert content(two) == content(one)
    rows = res.read_jsonl(two / "samples.jsonl")
    assert [r["id"] for r in rows] == [f"s{i}" for i in range(5)]  # merged in sample order
    assert not list(two.glob("samples.rank*"))
    s1, s2 = summary(one), summary(two)
    assert s2["metrics"] == s1["metrics"] and s2["ci"] == s1["ci"] and s2["n_samples"] == 5
    assert s2["environment"]["processes"] == 2 and s1["environment"]["processes"] == 1
    assert s2["efficiency"]["processes"] == 2 and s2["efficiency"]["aggregate_throughput_images_per_s"] > 0
    (session,) = res.read_sessions(two)
    assert [p["n_generated"] for p in session["ranks"]] == [3, 2] and session["completed"]
    assert {r["batch"] for r in rows} == {f"s0-b{j}" for j in range(5)}


@pytest.mark.slow
def test_killed_rank_then_one_process_loses_and_duplicates_nothing(tmp_path, ckpt):
    """A 2-process run killed mid-pass: rank files with rows (one torn), no merge, no end record. The
    re-run with one process merges them, generates only what is missing and matches a clean run."""
    data = make_vqa(tmp_path / "data", 6)
    clean, out = tmp_path / "clean", tmp_path / "res"
    r = run_module("vlmslim", "bench", ckpt, "--data", data, "--out", out, *FAST, "--limit", "2")
    assert r.returncode == 0, r.stderr[-3000:]  # an earlier, finished session (s0..: a --limit 2 subset)
    done = {x["id"] for x in res.read_jsonl(out / "samples.jsonl")}
    r = run_module("vlmslim", "bench", ckpt, "--data", data, "--out", clean, *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    by_id = {x["id"]: x for x in res.read_jsonl(clean / "samples.jsonl")}
    todo = [f"s{i}" for i in range(6) if f"s{i}" not in done]
    # What a kill -9 of both ranks leaves: each rank flushed some of its batches, rank 1 mid-write.
    res.append_jsonl(out / "sessions.jsonl", {"session": 1, "event": "start", "pid": 1, "processes": 2})
    (out / "samples.rank0.jsonl").write_text(json.dumps({**by_id[todo[0]], "session": 1}) + "\n")
    (out / "samples.rank1.jsonl").write_text(json.dumps({**by_id[todo[1]], "session": 1}) + "\n"
                                             + json.dumps({**by_id[todo[3]], "session": 1})[:40])
    r = run_module("vlmslim", "bench", ckpt, "--data", data, "--out", out, *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    ids = [x["id"] for x in res.read_jsonl(out / "samples.jsonl")]
    assert sorted(ids) == sorted(by_id) and len(ids) == len(set(ids)) and not list(out.glob("samples.rank*"))
    assert content(out) == content(clean)
    sessions = res.read_sessions(out)
    assert [s["killed"] for s in sessions] == [False, True, False] and sessions[2]["n_generated"] == len(todo) - 2
    s = summary(out)
    assert s["n_samples"] == 6 and s["metrics"] == summary(clean)["metrics"] and s["run"]["resumed"]


@pytest.mark.slow
def test_processes_wrapper_resumes_across_process_counts(tmp_path, ckpt):
    """`--processes 2` (the wrapper over accelerate's launcher) finishes what a 1-process run began."""
    data = make_vqa(tmp_path / "data", 5)
    out = tmp_path / "res"
    r = run_module("vlmslim", "bench", ckpt, "--data", data, "--out", out, *FAST, "--limit", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_module("vlmslim", "bench", ckpt, "--data", data, "--out", out, *FAST, "--processes", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    ids = [x["id"] for x in res.read_jsonl(out / "samples.jsonl")]
    assert sorted(ids) == [f"s{i}" for i in range(5)] and len(set(ids)) == 5
    s = summary(out)
    assert s["n_samples"] == 5 and s["environment"]["processes"] == 2 and s["run"]["sessions"] == 2


def test_device_map_study_smoke_on_the_cpu(tmp_path, monkeypatch):
    """`python -m studies.device_map_gpu --smoke`: the GPU study's code path on the tiny LLaVA."""
    from studies import device_map_gpu

    monkeypatch.setattr(sys, "argv", ["device_map_gpu", "--out-dir", str(tmp_path), "--smoke", "--repeats", "1"])
    device_map_gpu.main()
    result = json.loads((tmp_path / "device_map_gpu.json").read_text())
    assert result["tokens_equal"] and result["tokens_matching_prefix"] == device_map_gpu.NEW_TOKENS
    assert [r["device_map"] for r in result["rows"]] == [None, "sequential"]
    assert all(r["decode_ms_per_token"] > 0 for r in result["rows"])
    assert "| device_map sequential | cpu=2GiB |" in (tmp_path / "device_map_gpu.md").read_text()


def test_one_gpu_auto_device_map_is_the_sequential_split_the_gpu_study_measured():
    # studies.device_map_gpu measured `sequential` with 0=8GiB,cpu=100GiB on one GPU (docs/scale.md); with a
    # single GPU, `auto` / `balanced` resolve to exactly the same placement (20 of the 7B's modules on GPU 0).
    import logging

    from vlmslim.loading import parse_max_memory
    from vlmslim.loading.placement import infer_device_map
    from vlmslim.loading.skeleton import empty_model, load_arch_config

    logging.getLogger("accelerate").setLevel(logging.ERROR)  # "Device 0 is not available" on a CPU box
    model = empty_model(load_arch_config("llava-1.5-7b"))
    limit = parse_max_memory("0=8GiB,cpu=100GiB")
    maps = {s: infer_device_map(model, s, dict(limit), torch.float16) for s in ("sequential", "auto", "balanced")}
    assert maps["auto"] == maps["sequential"] == maps["balanced"]
    assert sum(v == 0 for v in maps["auto"].values()) == 20 and "cpu" in maps["auto"].values()
