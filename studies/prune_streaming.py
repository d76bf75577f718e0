"""Peak RSS and wall time of `vlmslim prune --streaming` on the LLaVA-1.5-7B shape, and its identity with
the in-memory prune.

    python -m studies.prune_streaming --work /tmp/vlmslim-stream --out-json docs/results/prune_streaming.json

1. Writes configs/models/llava-1.5-7b.json with random fp16 weights to `--work` once (5 GB shards, written a
   tensor at a time by the same shard writer the streaming prune uses: N(0, 0.02) matrices, ones elsewhere).
2. Runs `python -m vlmslim prune SRC --out OUT --glu R --heads R --streaming` as a child process: wall time
   from launch to exit, peak RSS = the child's `ru_maxrss` from `os.wait4`.
3. Identity: the same shape cut to `--identity-layers` decoder layers (full widths, full vision tower),
   pruned by both paths in child processes; every file but vlmslim.json / README.md must be byte-equal, the
   manifests equal apart from time stamps and the reload-check record, and the streamed output, reloaded
   with `vlmslim.load_model`, must give the in-memory output's logits exactly. (The full 7B in-memory prune
   plus its reload check does not fit this machine's memory next to other jobs: 13.9 GiB for the prune alone.)
The checkpoints are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from vlmslim.checkpoint import reference_logits
from vlmslim.loading import CONFIG_DIR, empty_model, load_arch_config, load_model
from vlmslim.manifest import library_versions, now_utc
from vlmslim.pruning.shards import ShardWriter

logger = logging.getLogger("studies.prune_streaming")
ROOT = Path(__file__).resolve().parents[1]
GiB = 1024**3
SKIP = {"vlmslim.json", "README.md"}  # carry time stamps; compared as JSON instead
VOLATILE_STEP = {"seconds", "reload_max_abs_diff", "reload_check"}


@torch.no_grad()
def write_random_checkpoint(config_path: Path, out: Path, layers: int | None, shard: str, seed: int = 0) -> float:
    """The config with random fp16 weights, written a tensor at a time; returns seconds."""
    started = time.perf_counter()
    config = load_arch_config(str(config_path))
    if layers is not None:
        tc = config.text_config
        tc.num_hidden_layers = layers
        if isinstance(getattr(tc, "layer_types", None), list):
            tc.layer_types = tc.layer_types[:layers]
    model = empty_model(config).to(torch.float16)
    out.mkdir(parents=True)
    writer = ShardWriter(model, out, max_shard_size=shard)
    gen = torch.Generator().manual_seed(seed)
    for key in writer.model_keys():
        meta = model.get_parameter_or_buffer(key)
        t = torch.empty(meta.shape, dtype=meta.dtype)
        if t.is_floating_point() and t.dim() >= 2:
            t.normal_(0.0, 0.02, generator=gen)
        elif t.is_floating_point():
            t.fill_(1.0)
        else:
            t = dict(model.named_buffers())[key]  # real buffers (position ids)
        writer.write(key, t)
    writer.close()
    model.config.dtype = "float16"
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    return time.perf_counter() - started


def run_child(args: list[str]) -> dict:
    """Run `python -m vlmslim ARGS`; wall seconds and the child's peak RSS (ru_maxrss of wait4)."""
    cmd = [sys.executable, "-m", "vlmslim", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    logger.info("running %s", " ".join(cmd))
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(usage.ru_maxrss * 1024 / GiB, 3),
            "user_s": round(usage.ru_utime, 1), "sys_s": round(usage.ru_stime, 1)}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def manifest_without_timings(path: Path) -> dict:
    """The checkpoint's vlmslim.json without what differs between equal runs (time stamps, reload check)."""
    m = json.loads((path / "vlmslim.json").read_text())
    m.pop("created")
    for s in m["steps"]:
        for k in VOLATILE_STEP:
            s.pop(k, None)
    return m


def compare(memory: Path, streamed: Path) -> dict:
    """Files byte for byte, manifests apart from time stamps, logits of both reloaded."""
    files = sorted(p.name for p in memory.iterdir())
    if files != sorted(p.name for p in streamed.iterdir()):
        return {"identical": False, "why": "different file lists"}
    differing = [f for f in files if f not in SKIP and sha256(memory / f) != sha256(streamed / f)]
    same_manifest = manifest_without_timings(memory) == manifest_without_timings(streamed)
    a, _ = load_model(memory)
    expected = reference_logits(a)
    del a
    b, _ = load_model(streamed)
    diff = (reference_logits(b) - expected).abs().max().item()
    del b
    return {"identical": not differing and same_manifest and diff == 0.0, "files_compared": len(files) - len(SKIP),
            "files_differing": differing, "manifest_equal_but_time_stamps": same_manifest,
            "reload_logits_max_abs_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/vlmslim-stream"))
    ap.add_argument("--out-json", type=Path, default=ROOT / "docs" / "results" / "prune_streaming.json")
    ap.add_argument("--config", type=Path, default=CONFIG_DIR / "llava-1.5-7b.json")
    ap.add_argument("--glu", type=float, default=0.3)
    ap.add_argument("--heads", type=float, default=0.25)
    ap.add_argument("--shard-size", default="5GB", help="max_shard_size of the random input checkpoint")
    ap.add_argument("--identity-layers", type=int, default=2, help="decoder layers of the identity check's model")
    ap.add_argument("--skip-full", action="store_true", help="only the reduced-depth identity check")
    ap.add_argument("--skip-identity", action="store_true", help="only the full 7B streaming run")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints under --work")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    free = shutil.disk_usage(args.work.parent).free
    if free < 30 * GiB:
        raise SystemExit(f"{args.work.parent} has {free / GiB:.0f} GiB free; the study needs ~30 GiB")
    if args.work.exists():
        raise SystemExit(f"{args.work} exists; remove it or pass another --work")
    prune = ["--glu", str(args.glu), "--heads", str(args.heads)]
    result = {"date": now_utc(), "machine": {"cpu": platform.processor() or platform.machine(),
                                             "cores": os.cpu_count(), "ram_gib": round(_ram() / GiB, 1)},
              "versions": library_versions(), "prune": {"glu": args.glu, "heads": args.heads},
              "input_shard_size": args.shard_size}
    try:
        if not args.skip_full:
            src, out = args.work / "llava-7b-random", args.work / "llava-7b-streamed"
            write_s = write_random_checkpoint(args.config, src, None, args.shard_size)
            logger.info("wrote %s in %.0f s (%.1f GB)", src, write_s, _size(src) / 1e9)
            full = run_child(["prune", str(src), "--out", str(out), *prune, "--streaming"])
            step = json.loads((out / "vlmslim.json").read_text())["steps"][-1]
            result["full_7b"] = {"write_random_s": round(write_s, 1), "input_gb": round(_size(src) / 1e9, 2),
                                 "output_gb": round(_size(out) / 1e9, 2), "streaming": full,
                                 "params_before": sum(step["params_before"].values()),
                                 "params_after": sum(step["params_after"].values()),
                                 "stock_loadable": step["stock_loadable"]}
            logger.info("full 7B streaming: %s", full)
            shutil.rmtree(src), shutil.rmtree(out)
        if args.skip_identity:
            return
        k = args.identity_layers
        src = args.work / f"llava-7b-{k}layers-random"
        write_random_checkpoint(args.config, src, k, args.shard_size)
        mem, streamed = args.work / f"{k}layers-memory", args.work / f"{k}layers-streamed"
        memory_run = run_child(["prune", str(src), "--out", str(mem), *prune])
        streaming_run = run_child(["prune", str(src), "--out", str(streamed), *prune, "--streaming"])
        result["identity"] = {"decoder_layers": k, "memory": memory_run, "streaming": streaming_run,
                              **compare(mem, streamed)}
        logger.info("identity (%d layers): %s", k, result["identity"])
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
        _write(args.out_json, result)


def _write(path: Path, result: dict) -> None:
    """Sections measured now replace those of an earlier run (a --skip-* run keeps the other's numbers)."""
    old = json.loads(path.read_text()) if path.exists() else {}
    for section in ("full_7b", "identity"):
        if section in old and section not in result:
            result[section] = {**old[section], "date": old.get("date")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s", path)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


if __name__ == "__main__":
    main()
