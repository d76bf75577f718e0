"""The summary: scoring plus blocks built from a results dir's rows and session records (never from live
model state, so a resumed run reports over every session's rows)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import math
import platform
import shutil
import time
from pathlib import Path

import torch

from vlmslim.benchmarks import results as res
from vlmslim.benchmarks.efficiency import MB, decode_weight_bytes, energy_summary, roofline, stats
from vlmslim.benchmarks.generate import GREEDY
from vlmslim.benchmarks.tasks import TASKS, bertscore_config, paired_differences
from vlmslim.manifest import git_revision, library_versions
from vlmslim.errors import BenchmarkError
from vlmslim.families import COMPONENTS

logger = logging.getLogger(__name__)

QUANT_KINDS = ("int8", "nf4", "fp4")
QUANT_STEP_KINDS = ("quantize",)  # the step kind `vlmslim quantize` records
# Scores of the last scoring (and --baseline comparison) in a results dir, keyed by a hash of what they depend on.
SCORES_CACHE = "scores_cache.json"
SCORING_PACKAGES = ("vlmslim", "pycocoevalcap", "rouge-score", "bert-score")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def model_label(model: str) -> str:
    """Short name for tables and subdirs: a dir's name, or a hub id's repo name."""
    return Path(model.rstrip("/")).name or model


def precision(census: dict) -> str:
    """"16-bit" / "32-bit" / "int8" / "nf4" / "fp4" (joined with "+" if mixed) from the language decoder's
    Linear layers, which hold most weights and are what quantization recipes target."""
    kinds = set(census["components"].get("language", {}).get("linear", {}))
    quant = [k for k in QUANT_KINDS if k in kinds]
    if quant:
        return "+".join(quant)
    if kinds & {"fp16", "bf16"}:
        return "16-bit"
    return "32-bit" if "fp32" in kinds else "+".join(sorted(kinds)) or "unknown"


def _compact(obj, max_items: int = 32):
    """Long lists (kept indices of a pruning step) become {"len", "sha256"}: the summary stays small."""
    if isinstance(obj, dict):
        return {k: _compact(v, max_items) for k, v in obj.items()}
    if isinstance(obj, list):
        if len(obj) > max_items:
            blob = json.dumps(obj, sort_keys=True, default=str).encode()
            return {"len": len(obj), "sha256": hashlib.sha256(blob).hexdigest()}
        return [_compact(v, max_items) for v in obj]
    return obj


def compact_manifest(manifest: dict | None) -> dict | None:
    """What the summary needs from a checkpoint manifest: the base model and the steps, compacted."""
    if manifest is None:
        return None
    return {"base": manifest.get("base"), "steps": _compact(manifest.get("steps") or [])}


def model_block(model: str, source: str, manifest: dict | None, census: dict, family: str, quant: str | None,
                name: str | None = None, token_reduction: dict | None = None) -> dict:
    steps = (manifest or {}).get("steps") or []
    pruning = [s for s in steps if s.get("kind") not in QUANT_STEP_KINDS]
    prec = precision(census)
    return {
        "name": name or model_label(model),
        "path": source,
        "family": family,
        "precision": prec,
        "pruning": pruning,
        "quantized_at_load": quant,
        "token_reduction": token_reduction,  # {"image_tokens", "method", "seed"} or None (all image tokens)
        # The reference point of comparisons: unpruned, unquantized (16-bit, or 32-bit on CPU), all image tokens.
        "is_baseline": not pruning and prec in ("16-bit", "32-bit") and token_reduction is None,
        "base_model": ((manifest or {}).get("base") or {}).get("model"),
    }


def environment(devices: list[torch.device]) -> dict:
    env = dict(library_versions())
    for pkg in ("numpy", "codecarbon", "pycocoevalcap", "rouge-score", "bert-score"):
        try:
            env[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            env[pkg] = None
    if devices:
        env["device"] = ", ".join(f"{d} ({torch.cuda.get_device_name(d)})" for d in devices)
    else:
        env["device"] = f"cpu ({_cpu_model()})"
    env["cuda"] = torch.version.cuda
    env["torch_threads"] = torch.get_num_threads()
    env["platform"] = platform.platform()
    env["git_revision"] = git_revision()
    return env


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _batches(rows: list[dict]) -> list[dict]:
    """One record per measured batch (rows of a batch share its timings)."""
    seen = {}
    for r in rows:
        seen.setdefault(r["batch"], r)
    return list(seen.values())


def efficiency_block(rows: list[dict], sessions: list[dict], census: dict, disk_bytes: int, batch_size: int,
                     warmup: int) -> dict:
    lat, ttft = stats(r["latency_s"] for r in rows), stats(r["ttft_s"] for r in rows)
    batches = _batches(rows)
    busy_s = sum(b["latency_s"] for b in batches)
    decode_s = sum(b["decode_s"] for b in batches if b["decode_s"] is not None)
    decode_steps = sum(b["steps"] - 1 for b in batches if b["decode_s"] is not None)
    decode_ms = 1000 * decode_s / decode_steps if decode_steps else None
    tokens = [r["tokens"] for r in rows]
    peaks = [s["peak_vram_mb"] for s in sessions if s.get("peak_vram_mb") is not None]
    reserved = [s["peak_vram_reserved_mb"] for s in sessions if s.get("peak_vram_reserved_mb") is not None]
    rss = [s["peak_rss_mb"] for s in sessions if s.get("peak_rss_mb") is not None]
    bandwidth = next((s["bandwidth_gb_s"] for s in reversed(sessions) if s.get("bandwidth_gb_s")), None)
    per_device: dict[str, float] = {}
    for s in sessions:
        for d, mb in (s.get("peak_vram_mb_per_device") or {}).items():
            per_device[d] = max(mb, per_device.get(d, 0.0))
    # Aggregate: what all processes together got through per second of wall-clock pass (each session's pass
    # lasts as long as its slowest process); sessions of older versions recorded no pass time.
    timed = [s for s in sessions if s.get("pass_s") and s.get("n_generated")]
    wall_s = sum(s["pass_s"] for s in timed)
    energy_per_sample, energy = energy_summary(sessions)
    comps = census["components"]
    return {
        "latency_s_p50": lat["p50"], "latency_s_p90": lat["p90"], "latency_s_mean": lat["mean"],
        "ttft_s_p50": ttft["p50"], "ttft_s_p90": ttft["p90"], "ttft_s_mean": ttft["mean"],
        "decode_ms_per_token": decode_ms,
        "throughput_images_per_s": len(rows) / busy_s if busy_s else None,
        "aggregate_throughput_images_per_s": sum(s["n_generated"] for s in timed) / wall_s if wall_s else None,
        "processes": max((s.get("processes") or 1 for s in sessions), default=1),
        "tokens_per_s": sum(tokens) / busy_s if busy_s else None,
        "tokens_per_sample_mean": sum(tokens) / len(tokens) if tokens else None,
        "peak_vram_mb": max(peaks) if peaks else None,
        "peak_vram_reserved_mb": max(reserved) if reserved else None,
        "peak_vram_mb_per_device": per_device or None,
        "peak_rss_mb": max(rss) if rss else None,
        "model_size_mb": census["total_bytes"] / MB,
        "disk_mb": disk_bytes / MB,
        "params": census["total_params"],
        "components": {c: {"params": v["params"], "mb": v["bytes"] / MB} for c, v in comps.items()},
        "energy_wh_per_sample": energy_per_sample,
        "energy": energy,
        **roofline(decode_weight_bytes(census), bandwidth, decode_ms),
        "batch_size": batch_size,
        "warmup_batches": warmup,
        "notes": [
            f"per-sample latency/ttft = those of the sample's batch (batch size {batch_size}); "
            "latency and ttft include image preprocessing",
            "decode_ms_per_token = one decoding step of the batch (inter-token latency), total over batches",
            "tokens count each answer up to and including EOS; throughput = samples / summed batch latency "
            "(one process); aggregate_throughput = samples / wall-clock pass time of all processes together",
            "model_size_mb = parameter+buffer bytes as loaded (census); disk_mb = weights files on disk",
            "peak_vram_* reset after warm-up, summed over the model's GPUs, max over sessions and processes "
            "(peak_vram_mb_per_device: each GPU's own); peak_rss_mb is the process peak (includes loading)",
            "latency and ttft percentiles are over every process's samples",
        ],
    }


def score_and_summarise(cfg, task, dataset, out, rows, sessions, record, baseline, weights, weight_files) -> dict:
    """Score every generated row of the current selection, write the scored samples.jsonl and the summary."""
    selected = {s.id for s in dataset.samples}
    scored = [r for r in rows if r["id"] in selected and r.get("prediction") is not None]
    skipped = [{"id": r["id"], "image": r["image"], "reason": r["skipped"]}
               for r in rows if r["id"] in selected and r.get("skipped")]
    if not scored:
        raise BenchmarkError(f"no sample of {cfg.data} could be generated ({len(skipped)} skipped: "
                             f"{'; '.join(s['reason'] for s in skipped[:3])}); rows kept in {out / res.SAMPLES}")
    predictions = {r["id"]: r["prediction"] for r in scored}
    references = {r["id"]: r["references"] for r in scored}
    bertscore = bertscore_config(cfg.bertscore_model) if task.uses_bertscore else None
    scores = _score(task, cfg, out, predictions, references, bertscore)
    for r in rows:  # rows outside this --limit selection keep no scores: they were not in this corpus
        r["scores"] = scores["per_sample"].get(r["id"])
    res.rewrite_samples(out, rows)

    last = next(s for s in reversed(sessions) if s.get("census"))
    disk_bytes = sum((Path(weights) / f).stat().st_size for f in weight_files)
    summary = {
        "model": model_block(cfg.model, last["model_source"], last.get("manifest"), last["census"], last["family"],
                             cfg.quant, name=cfg.name,
                             token_reduction=cfg.token_spec.to_dict() if cfg.token_spec else None),
        "task": task.name,
        "dataset": {"path": str(Path(cfg.data).resolve()), "name": dataset.meta.get("dataset") or Path(cfg.data).name,
                    "sha256": record["dataset_sha256"], "limit": cfg.limit, "seed": cfg.seed},
        "data_dir": str(Path(cfg.data).resolve()),
        "n_samples": len(scored),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "metrics": scores["metrics"],
        "ci": scores["ci"],
        "metric_notes": scores["notes"],
        "efficiency": efficiency_block(scored, sessions, last["census"], disk_bytes, cfg.batch_size, cfg.warmup),
        "environment": last["environment"],
        "checkpoint_sha256": record["checkpoint_sha256"],
        "protocol": {
            "task": task.name, "prompt": cfg.prompt, "prompt_example": last.get("prompt_example"),
            "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "greedy": True,
            "generate_kwargs": GREEDY, "dtype": cfg.dtype or "as saved", "resolved_dtype": last.get("resolved_dtype"),
            "device": cfg.device, "device_map": cfg.device_map, "max_memory": cfg.max_memory,
            "placement": last.get("placement"), "processes": last["environment"].get("processes", 1),
            "engine": cfg.engine, "fuse": cfg.fuse, "fused_projections": last.get("fused_projections"),
            "attention": cfg.attention, "int4_decode_kernels": last.get("int4_decode_kernels") or None,
            "image_tokens": cfg.image_tokens,
            "token_method": cfg.token_method if cfg.image_tokens else None, "quant": cfg.quant, "ocr_tokens": cfg.ocr_tokens, "seed": cfg.seed,
            "bootstrap": cfg.bootstrap, "warmup_batches": cfg.warmup,
            "bertscore_model": cfg.bertscore_model if task.uses_bertscore else None,
        },
        # Resumed = rows of more than one session (a killed session's rows count: it has a start record).
        "run": {"sessions": len(sessions), "resumed": len({r.get("session") for r in rows if r["id"] in selected}) > 1,
                "completed_sessions": sum(bool(s.get("completed")) for s in sessions),
                "killed_sessions": sum(bool(s.get("killed")) for s in sessions), "finished": now()},
        "paired_vs_baseline": _paired(task, cfg, out, predictions, references, baseline, bertscore) if baseline else None,
    }
    res.write_summary(out, summary, csv_row(summary))
    logger.info("wrote %s", out / res.SUMMARY)
    return summary


def _paired(task, cfg, out, predictions, references, baseline, bertscore) -> dict:
    common = sorted(set(predictions) & set(baseline["predictions"]))
    if not common:
        raise BenchmarkError(f"--baseline {baseline['path']} shares no scored sample with this run")
    ours, theirs = {i: predictions[i] for i in common}, {i: baseline["predictions"][i] for i in common}
    refs = {i: references[i] for i in common}
    key = _digest({"settings": _scoring_settings(task, cfg, bertscore), "predictions": ours, "baseline": theirs,
                   "references": refs})
    diffs = _read_cache(out, "paired", key)
    if diffs is not None:
        logger.info("paired differences vs %s: cached in %s (same predictions and settings), not recomputed",
                    baseline["path"], out / SCORES_CACHE)
    else:
        logger.info("paired differences vs %s over %d common samples (%d bootstrap resamples)…", baseline["path"],
                    len(common), cfg.bootstrap)
        diffs = paired_differences(task, ours, theirs, refs, n_bootstrap=cfg.bootstrap, seed=cfg.seed,
                                   bertscore=bertscore, allow_fallback=cfg.java_fallback)
        if not bertscore or any(k.startswith("bertscore") for k in diffs):  # BERTScore absent: retry next time
            _write_cache(out, "paired", key, diffs)
    base_protocol = baseline["summary"].get("protocol", {})
    changed = [k for k in ("prompt", "max_new_tokens", "batch_size") if base_protocol.get(k) != getattr(cfg, k)]
    return {"baseline": baseline["path"], "baseline_model": baseline["summary"].get("model", {}).get("name"),
            "n_common": len(common), "protocol_differs": changed,
            "differences": {k: {"diff": d, "lo": lo, "hi": hi} for k, (d, lo, hi) in diffs.items()}}


# ---------------------------------------------------------------- scoring, cached


def _scoring_settings(task, cfg, bertscore) -> dict:
    """Everything a score depends on besides the texts: a change re-scores."""
    versions = {}
    for pkg in SCORING_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"task": task.name, "n_bootstrap": cfg.bootstrap, "seed": cfg.seed, "allow_fallback": cfg.java_fallback,
            # Java present: PTB tokens + METEOR; absent: the labelled fallback (metrics.tokenize's test)
            "java": shutil.which("java") is not None,
            "bertscore": dataclasses.asdict(bertscore) if bertscore else None, "versions": versions}


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def _load_cache(out: Path) -> dict:
    """{kind: {"key", "value"}}; an unreadable cache is ignored (it is rebuilt)."""
    path = out / SCORES_CACHE
    if not path.is_file():
        return {}
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        logger.warning("%s is unreadable (%s): ignored", path, e)
        return {}
    return cache if isinstance(cache, dict) else {}


def _read_cache(out: Path, kind: str, key: str):
    entry = _load_cache(out).get(kind)
    return entry["value"] if isinstance(entry, dict) and entry.get("key") == key else None


def _write_cache(out: Path, kind: str, key: str, value) -> None:
    cache = _load_cache(out)
    cache[kind] = {"key": key, "value": value}
    res.atomic_write_text(out / SCORES_CACHE, json.dumps(cache, ensure_ascii=False))


def _score(task, cfg, out: Path, predictions: dict, references: dict, bertscore) -> dict:
    """task.score as {metrics, ci, per_sample, notes}; cached while predictions, references and settings hold."""
    key = _digest({"settings": _scoring_settings(task, cfg, bertscore), "predictions": predictions,
                   "references": references})
    cached = _read_cache(out, "score", key)
    if cached is not None:
        logger.info("scores of these %d %s predictions are cached in %s (same predictions, references and "
                    "settings): not re-scoring", len(predictions), task.name, out / SCORES_CACHE)
        return cached
    extra = f" + BERTScore ({bertscore.model})" if bertscore else ""
    logger.info("scoring %d %s predictions: %s%s, %d bootstrap resamples…", len(predictions), task.name,
                ", ".join(k for k in task.metric_keys if not k.startswith("bertscore")), extra, cfg.bootstrap)
    started = time.perf_counter()
    result = task.score(predictions, references, n_bootstrap=cfg.bootstrap, seed=cfg.seed, bertscore=bertscore,
                        allow_fallback=cfg.java_fallback)
    logger.info("scored in %.1f s", time.perf_counter() - started)
    scores = result.to_json()
    if not str(result.notes.get("bertscore", "")).startswith("absent"):  # an absent model may load next time
        _write_cache(out, "score", key, scores)
    return scores


# ---------------------------------------------------------------- summary.csv

# One tidy row per run, stable columns per task: scalars only (numbers, plain strings, empty = absent);
# lists, kept indices and notes stay in summary.json. Quality: each of the task's `metric_keys` with its CI
# bounds and its paired difference vs --baseline (empty without one).
CSV_EFFICIENCY = ("latency_s_p50", "latency_s_p90", "ttft_s_p50", "decode_ms_per_token", "throughput_images_per_s",
                  "tokens_per_s", "tokens_per_sample_mean", "peak_vram_mb", "peak_vram_reserved_mb", "peak_rss_mb",
                  "energy_wh_per_sample", "roofline_fraction")
CSV_PROTOCOL = ("prompt", "max_new_tokens", "batch_size", "dtype", "resolved_dtype", "device", "engine", "quant",
                "ocr_tokens", "seed", "bootstrap", "bertscore_model")


def _cell(value):
    """A CSV cell: None (empty) for absent or non-finite numbers; a list or dict here is a bug."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is not None and not isinstance(value, (str, int, float)):
        raise TypeError(f"summary.csv cells are scalars, got {type(value).__name__}: {value!r}")
    return value


def _pruning_columns(steps: list[dict]) -> dict:
    """Methods as text; GLU/head fractions removed from the original (successive steps compound)."""
    kept = {"glu": 1.0, "heads": 1.0}
    for step in steps:
        for key in kept:
            ratio = (step.get("params") or {}).get(key) or 0.0
            kept[key] *= 1.0 - ratio
    return {"pruning": ", ".join(str(s.get("method") or s.get("kind")) for s in steps) or "none",
            "glu_ratio": 1.0 - kept["glu"], "heads_ratio": 1.0 - kept["heads"],
            "dropped_layers": sum(len(s.get("dropped_layers") or []) for s in steps)}


def _quality_columns(summary: dict) -> dict:
    paired = summary.get("paired_vs_baseline") or {}
    diffs = paired.get("differences") or {}
    row = {"baseline": paired.get("baseline_model"), "n_common": paired.get("n_common")}
    for key in TASKS[summary["task"]].metric_keys:
        lo, hi = summary["ci"].get(key) or (None, None)
        d = diffs.get(key) or {}
        row.update({key: summary["metrics"].get(key), f"{key}_ci_lo": lo, f"{key}_ci_hi": hi,
                    f"{key}_delta": d.get("diff"), f"{key}_delta_ci_lo": d.get("lo"), f"{key}_delta_ci_hi": d.get("hi")})
    return row


def csv_row(summary: dict) -> dict:
    """summary.csv's row: identity, protocol, quality (value, CI, delta vs baseline), efficiency, size, run."""
    model, eff, env, protocol = summary["model"], summary["efficiency"], summary["environment"], summary["protocol"]
    notes = summary.get("metric_notes") or {}
    row = {
        "name": model["name"], "family": model["family"], "precision": model["precision"],
        **_pruning_columns(model["pruning"]), "quantized_at_load": model["quantized_at_load"],
        "is_baseline": model["is_baseline"], "base_model": model["base_model"], "path": model["path"],
        "checkpoint_sha256": summary["checkpoint_sha256"], "task": summary["task"],
        "dataset": summary["dataset"]["name"], "dataset_sha256": summary["dataset"]["sha256"],
        "limit": summary["dataset"].get("limit"), "n_samples": summary["n_samples"], "n_skipped": summary["n_skipped"],
        **{key: protocol.get(key) for key in CSV_PROTOCOL},
        "tokenizer": notes.get("tokenizer"),
        **_quality_columns(summary),
        **{key: eff.get(key) for key in CSV_EFFICIENCY},
        "energy_basis": eff["energy"].get("basis"),
        "params": eff["params"], "model_size_mb": eff["model_size_mb"], "disk_mb": eff["disk_mb"],
        **{f"{c}_params": eff["components"].get(c, {}).get("params") for c in COMPONENTS},
        "device": env.get("device"), "torch": env.get("torch"), "transformers": env.get("transformers"),
        "git_revision": env.get("git_revision"),
        "sessions": summary["run"]["sessions"], "resumed": summary["run"]["resumed"],
        "finished": summary["run"].get("finished"),
    }
    return {k: _cell(v) for k, v in row.items()}
