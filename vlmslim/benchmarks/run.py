"""`bench`: one controlled, resumable run of a checkpoint on a dataset — quality and efficiency from the
same generations.

Flow: validate config → load data (task check, --limit subset) → hash the checkpoint (weights, config,
processor files) → lock the results dir → open/resume it (refusing a different checkpoint, dataset or
protocol; merging rank files a killed data-parallel run left) → load the model → generate the missing
samples, appending each batch's rows → score every row → summary.json/.csv → unlock. Results-dir format:
`results.py`. Under a launcher (`--processes N`, `accelerate launch`), rank 0 does the results-dir steps
and every rank generates its share of batches: `parallel.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from vlmslim.benchmarks import results as res
from vlmslim.data import load as load_dataset
from vlmslim.data.hashes import check_disjoint
from vlmslim.benchmarks.efficiency import EnergyMeter, measure_bandwidth_gb_s, peak_memory_mb, peak_rss_mb
from vlmslim.benchmarks.efficiency import MB, reset_peak_memory
from vlmslim.benchmarks.parallel import Ranks, check_processes, combine_sessions, current_ranks, shard_batches
from vlmslim.benchmarks.engine import ENGINES, decode_attention, dynamo_counts, kernels_record
from vlmslim.benchmarks.devices import cuda_devices, device_sync
from vlmslim.benchmarks.generate import generate_batch, generate_batch_compiled, prompt_text
from vlmslim.benchmarks.summary import compact_manifest, environment, model_label, now, score_and_summarise
from vlmslim.benchmarks.tasks import DEFAULT_BERTSCORE_MODEL, get_task
from vlmslim.census import census as take_census
from vlmslim.loading import (check_device_map, load_model, model_devices, parse_max_memory, placement_summary,
                             resolve_source, spans_devices)
from vlmslim.manifest import read_manifest
from vlmslim.quantization import as_spec, load_quantized
from vlmslim.tokens import TokenSpec, check_supported
from vlmslim.errors import BenchmarkError, DataError, VlmslimError
from vlmslim.families import get_family
from vlmslim.fusion import fused_groups
from vlmslim.io import output_lock, sha256_file, write_errors, write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    model: str
    data: str
    out: str
    task: str | None = None  # None: the dataset's task
    limit: int | None = None  # a seeded subset (nested: a larger limit contains a smaller one)
    batch_size: int = 1
    max_new_tokens: int | None = None  # None: the task's
    prompt: str | None = None  # None: the task's
    ocr_tokens: bool = False
    device: str | None = None  # None: cuda if available, else cpu; "auto": device_map="auto"
    device_map: str | None = None  # auto | balanced | sequential: one model over the GPUs (and CPU), from_pretrained's
    max_memory: str | None = None  # with device_map: "0=20GiB,cpu=60GiB"
    dtype: str | None = None  # None: as saved
    quant: str | None = None  # a vlmslim.quantization recipe applied at load
    name: str | None = None  # label in tables and figures (default: the model dir's / repo's name)
    engine: str = "eager"  # "compiled": static KV cache + CUDA-graph decode step (benchmarks/engine.py)
    fuse: bool = True  # compiled engine: q|k|v and gate|up as one product each (vlmslim.fusion); eager: False
    attention: str = "split"  # compiled decode attention: split (vlmslim.attention; CUDA + Triton) | sdpa
    image_tokens: int | None = None  # vlmslim.tokens: K image tokens per image into the language model
    token_method: str = "pool"
    baseline: str | None = None  # results dir for paired differences
    allow_mixed: bool = False  # compare against a --baseline run with another protocol (recorded, not refused)
    bertscore_model: str | None = DEFAULT_BERTSCORE_MODEL  # None: no BERTScore
    energy: bool = True
    java_fallback: bool = False  # without Java: simple tokenizer, no METEOR, labelled in metric_notes
    country: str = "USA"  # codecarbon needs one offline; it affects CO2, not energy
    warmup: int = 1
    seed: int = 0
    bootstrap: int = 1000

    def __post_init__(self):
        if self.task is not None:
            get_task(self.task)
        for name, value, low in (("batch_size", self.batch_size, 1), ("limit", self.limit, 1),
                                 ("max_new_tokens", self.max_new_tokens, 1), ("warmup", self.warmup, 0),
                                 ("bootstrap", self.bootstrap, 0)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{name} must be an integer >= {low} (--{name.replace('_', '-')}), got {value!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)} (--engine), got {self.engine!r}")
        # recorded as what runs (protocol keys): eager never fuses; split attention needs compiled + CUDA + Triton
        object.__setattr__(self, "fuse", bool(self.fuse) and self.engine == "compiled")
        device = default_device() if self.device in (None, "auto") else self.device
        attention = decode_attention(self.attention, device)  # validates the choice
        object.__setattr__(self, "attention", attention if self.engine == "compiled" else "sdpa")
        self.token_spec  # validates --image-tokens / --token-method
        if self.dtype not in (None, "auto", "float16", "bfloat16", "float32", "fp16", "bf16", "fp32"):
            raise ValueError(f"dtype must be float16, bfloat16, float32 or auto (--dtype), got {self.dtype!r}")
        check_device_map(self.device_map, self.max_memory)
        if self.device_map is not None and self.device not in (None, "auto", default_device()):
            raise ValueError(f"--device-map places the model itself; leave --device {self.device} out")
        if self.device_map is not None and self.quant is not None:
            raise ValueError("--quant quantizes onto one device; with --device-map quantize first "
                             "(`vlmslim quantize`) and bench the checkpoint")
        existing = next(p for p in (Path(self.out), *Path(self.out).absolute().parents) if p.exists())
        if not existing.is_dir():  # --out (or, with several MODELs, its parent) is a file
            raise ValueError(f"--out {self.out}: {existing} is a file; a results dir is a directory")

    @property
    def token_spec(self) -> TokenSpec | None:
        return None if self.image_tokens is None else TokenSpec(self.image_tokens, self.token_method, self.seed)

    def resolved(self, dataset_task: str) -> "BenchConfig":
        task = get_task(self.task or dataset_task)
        model = str(Path(self.model).resolve()) if Path(self.model).exists() else self.model  # a hub id stays
        return dataclasses.replace(
            self, task=task.name, model=model, data=str(Path(self.data).resolve()), out=str(Path(self.out).resolve()),
            baseline=self.baseline and str(Path(self.baseline).resolve()),
            prompt=task.prompt if self.prompt is None else self.prompt,
            max_new_tokens=self.max_new_tokens or task.max_new_tokens,
            device=self.device or default_device(),
        )


def default_device() -> str:
    """--device when not given (and the main device of a --device-map run)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def select_samples(config: BenchConfig):
    """(dataset restricted to --limit, its task); DataError for a missing/empty set or a task mismatch."""
    dataset = load_dataset(config.data)
    tasks = sorted({s.task for s in dataset.samples})
    if config.task is not None and tasks != [config.task]:
        raise DataError(f"{config.data} is a {'/'.join(tasks)} dataset; --task {config.task} needs a "
                        f"{config.task} dataset (or leave --task out to use the dataset's task)")
    if len(tasks) != 1:
        raise DataError(f"{config.data} mixes tasks {tasks}; a benchmark runs one task")
    task = get_task(tasks[0])
    if config.ocr_tokens and not any(s.extras.get("ocr_tokens") for s in dataset.samples):
        raise DataError(f"--ocr-tokens: no sample in {config.data} has extras.ocr_tokens")
    return dataset.select(config.limit, config.seed), task


def _load(source: str, cfg: BenchConfig, ranks: Ranks):
    """The model to benchmark: as saved (on this rank's device, or over a --device-map), or quantized at
    load with `--quant RECIPE`. Refuses the compiled engine for a model spanning devices."""
    device = f"cuda:{ranks.local_rank}" if ranks.world > 1 and cfg.device == "cuda" else cfg.device
    if cfg.quant is None:
        model, processor = load_model(source, dtype=cfg.dtype, device=device, device_map=cfg.device_map,
                                      max_memory=parse_max_memory(cfg.max_memory))
    else:
        try:
            spec = as_spec(cfg.quant)
        except ValueError as e:
            raise BenchmarkError(f"--quant: {e}") from e
        model, processor = load_quantized(source, spec, dtype=cfg.dtype, device=device)
    if cfg.engine == "compiled" and spans_devices(model):
        raise BenchmarkError(f"--engine compiled needs the whole model on one device; this one spans "
                             f"{', '.join(model_devices(model))} (device map): use --engine eager")
    if processor is None:
        raise BenchmarkError(f"{source} has no processor (tokenizer + image processor); bench needs one")
    return model, processor


def bench(model: str, data: str, out: str, *, progress: bool = True,
          on_batch: Callable[[list[dict]], None] | None = None, **options) -> dict:
    """Benchmark one model (hub id, HF dir, vlmslim checkpoint) on a dataset dir; resumes `out` if it holds
    the same run. `options` are `BenchConfig` fields (task, limit, batch_size, …). Returns the summary."""
    return run_bench(BenchConfig(model=model, data=data, out=out, **options), progress=progress, on_batch=on_batch)


def run_bench(config: BenchConfig, *, progress: bool = True,
              on_batch: Callable[[list[dict]], None] | None = None) -> dict:
    """Run (or resume) one benchmark; returns the summary also written to `config.out`/summary.json.

    `on_batch(rows)` is called after each batch's rows are flushed (progress hooks, tests).
    """
    dataset, task = select_samples(config)
    cfg = config.resolved(task.name)
    if task.name in ("caption", "open-vqa") and not cfg.java_fallback:
        from vlmslim.benchmarks.metrics.tokenize import require_java

        require_java()  # fail before generating anything, not after an hour of it
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchmarkError(f"--device {cfg.device}: no CUDA device is available here (use --device cpu)")
    ranks = current_ranks(cpu=cfg.device == "cpu")
    check_processes(ranks.world, cfg.device, cfg.device_map)
    out = Path(cfg.out)
    source = resolve_source(cfg.model)
    if Path(source).is_dir():  # scores on images a recovery step trained on say nothing: refuse them
        check_disjoint(dataset, read_manifest(source), source)
    order = {s.id: i for i, s in enumerate(dataset.samples)}
    # Rank 0 alone hashes, locks and reads the dir, holding the lock (one writer per results dir) until it
    # has scored; the other ranks get its plan. `agree` shares a failure so no rank waits for a dead one.
    with contextlib.ExitStack() as held:
        def open_dir():
            if not ranks.main:
                return None
            record = _record(cfg, source)
            held.enter_context(output_lock(out))
            held.enter_context(write_errors(out))
            rows, sessions = _open_results(out, record, order)
            baseline = _read_baseline(cfg, task, record["dataset_sha256"]) if cfg.baseline else None
            done = {r["id"] for r in rows}
            todo = [s.id for s in dataset.samples if s.id not in done]
            logger.info("%s: %d samples selected, %d already in %s, %d to generate",
                        cfg.name or model_label(cfg.model), len(dataset.samples), len(done), out, len(todo))
            return record, rows, sessions, baseline, todo, bool(todo or not any(s.get("census") for s in sessions))

        lead = ranks.agree(open_dir, "opening the results dir")
        record, rows, sessions, baseline, todo_ids, generate = lead or (None, [], [], None, None, None)
        todo_ids, generate = ranks.broadcast((todo_ids, generate))
        if generate:
            wanted = set(todo_ids)
            todo = [s for s in dataset.samples if s.id in wanted]
            rows, sessions = _run_session(cfg, source, out, record, dataset, todo, task, rows, sessions, progress,
                                          on_batch, ranks, order)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if not ranks.main:
            return None  # rank 0 scores and summarises
        return score_and_summarise(cfg, task, dataset, out, rows, sessions, record, baseline,
                                   res.weights_dir(source), record["weights_files"])


def _record(cfg: BenchConfig, source: str) -> dict:
    """What config.yaml records and what a resumed run must match (checkpoint and dataset hashes, protocol)."""
    weights = res.weights_dir(source)
    logger.info("hashing the weights, config and processor files in %s (results are keyed by them)", weights)
    checkpoint_sha, files = res.checkpoint_sha256(weights)
    return {
        "config": dataclasses.asdict(cfg),
        "generation": {k: getattr(cfg, k) for k in res.PROTOCOL_KEYS},
        "checkpoint_sha256": checkpoint_sha,
        "checkpoint_files": files,
        "weights_files": res.weight_files(files),
        "dataset_sha256": sha256_file(Path(cfg.data) / res.SAMPLES),
    }


def _open_results(out: Path, record: dict, order: dict[str, int]) -> tuple[list[dict], list[dict]]:
    """(rows, sessions) already in `out`, refusing a dir of another run; rank files a killed data-parallel
    run left are merged first (`order`: sample id -> dataset position). A dir without rows (what a failed
    run of an older version left: config.yaml + empty samples.jsonl) holds nothing to mix."""
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"--out {out} is a file, not a results dir; pass another --out")
    rows = []
    if out.is_dir():
        res.clean_stale_tmp(out)
        rows = res.merge_rank_files(out, order)
    old = res.read_config(out)
    if old is not None and rows:
        res.check_resumable(out, old, record)
    elif old is None and out.is_dir() and any(out.iterdir()):
        raise BenchmarkError(f"{out} exists and is not a results dir (no {res.CONFIG}); pass another --out")
    return rows, res.read_sessions(out)


def _run_session(cfg, source, out, record, dataset, todo, task, rows, sessions, progress, on_batch, ranks, order):
    """Load the model, then write config + a session start record + rows; returns (rows, sessions) on rank 0.

    Nothing is written before the model has loaded (on every rank), and a results dir this run created is
    removed if it fails before its first row: a bad checkpoint leaves nothing that would block the fixed
    re-run. Rank r > 0 appends to its own rank file; rank 0 merges them after the pass.
    """
    model, processor = ranks.agree(lambda: _load(source, cfg, ranks), "loading the model")
    created = ranks.main and not out.exists()

    def start():
        if not ranks.main:
            return None
        out.mkdir(parents=True, exist_ok=True)
        res.write_config(out, record)
        return res.start_session(out, sessions, rows, started=now(), model_source=source, processes=ranks.world)

    session = ranks.broadcast(ranks.agree(start, "starting the session"))
    writer = res.SamplesWriter(out, res.SAMPLES if ranks.world == 1 else res.rank_file(ranks.rank))
    ok = False
    try:
        try:
            _generate(model, processor, dataset, todo, task, cfg, writer, session, progress, on_batch, ranks)
        except torch.cuda.OutOfMemoryError as e:
            raise BenchmarkError(f"out of GPU memory at batch size {cfg.batch_size} ({len(writer.rows)} rows "
                                 f"kept in {out}); a smaller --batch-size is a new protocol: "
                                 "use a new --out") from e
        finally:
            session["ended"] = now()
            parts = ranks.gather(session)  # every rank arrives here, done or failed: a barrier
            if ranks.main:
                res.end_session(out, session if ranks.world == 1 else combine_sessions(parts))
        if not all(p.get("completed") for p in parts):
            failed = [p["rank"] for p in parts if not p.get("completed")]
            raise BenchmarkError(f"bench process(es) {failed} did not finish their share; every flushed row is "
                                 "kept: re-run the same command (any number of processes) to resume")
        ok = True
    finally:
        writer.close()
        if ranks.main:
            merged = res.merge_rank_files(out, order) if out.is_dir() else []
            if created and not ok and not merged:
                shutil.rmtree(out, ignore_errors=True)
    if not ranks.main:
        return [], []
    return merged, res.read_sessions(out)


def _generate(model, processor, dataset, todo, task, cfg, writer, session, progress, on_batch, ranks) -> None:
    """Warm up, then generate this rank's batches of `todo`; fills `session` (also when interrupted)."""
    devices = cuda_devices(model)
    env = dict(environment(devices), processes=ranks.world)
    sync = device_sync(model)
    family = get_family(model).model_type
    session.update(
        family=family, census=take_census(model), manifest=compact_manifest(read_manifest(session["model_source"])),
        resolved_dtype=str(model.dtype).removeprefix("torch."), environment=env,
        rank=ranks.rank, devices=model_devices(model), placement=placement_summary(model), pass_s=None,
        prompt_example=prompt_text(model, processor, task.instruction(dataset.samples[0], cfg.prompt, cfg.ocr_tokens)),
        # Measured before the pass (and freed) so it does not show in the peak-memory numbers.
        bandwidth_gb_s=measure_bandwidth_gb_s(devices[0]) if devices else None,
        n_generated=0, n_skipped=0, completed=False, energy=None,
    )
    meter = EnergyMeter(cfg.country, devices) if cfg.energy and todo else None
    measuring = False
    if cfg.token_spec is not None:
        check_supported(model)  # before any sample is generated
    gen = functools.partial(generate_batch, tokens=cfg.token_spec)
    counts_at_start = dynamo_counts()
    if cfg.engine == "compiled":
        gen = functools.partial(generate_batch_compiled, decoders={}, tokens=cfg.token_spec, fuse=cfg.fuse,
                                attention=cfg.attention)
    mine = shard_batches(todo, cfg.batch_size, ranks)
    desc = (cfg.name or model_label(cfg.model)) + (f" [rank {ranks.rank}/{ranks.world}]" if ranks.world > 1 else "")
    bar = tqdm(total=sum(len(b) for _, b in mine), disable=not progress, desc=desc, unit="img")
    try:
        for j, samples in mine:
            batch, images, skipped = [], [], []
            for s in samples:
                try:
                    images.append(dataset.open_image(s))
                    batch.append(s)
                except DataError as e:  # a corrupt/missing image: recorded, counted, not fatal
                    skipped.append({"id": s.id, "image": s.image, "prediction": None, "references": s.references,
                                    "skipped": str(e), "session": session["session"], "scores": None})
            if skipped:
                logger.warning("skipping %d sample(s): %s", len(skipped), "; ".join(r["skipped"] for r in skipped))
                writer.append(skipped)
                session["n_skipped"] += len(skipped)
            if batch:
                instructions = [task.instruction(s, cfg.prompt, cfg.ocr_tokens) for s in batch]
                if not measuring:
                    for _ in range(cfg.warmup):  # same inputs as the first measured batch; outputs discarded
                        gen(model, processor, images, instructions, cfg.max_new_tokens, sync)
                    reset_peak_memory(devices)
                    if meter is not None:
                        meter.start()
                    measuring, t_pass = True, time.perf_counter()
                out = gen(model, processor, images, instructions, cfg.max_new_tokens, sync)
                batch_id = f"s{session['session']}-b{j}"  # j: index in the whole to-do list, unique over ranks
                rows = [{
                    "id": s.id, "image": s.image, "question": s.question, "prediction": pred,
                    "references": s.references, "tokens": n, "latency_s": out.latency_s, "ttft_s": out.ttft_s,
                    "preprocess_s": out.preprocess_s, "decode_s": out.decode_s, "steps": out.steps,
                    "decode_ms_per_token": out.decode_ms_per_token, "batch": batch_id, "batch_size": len(batch),
                    "session": session["session"], "scores": None,
                } for s, pred, n in zip(batch, out.predictions, out.tokens)]
                writer.append(rows)
                session["n_generated"] += len(rows)
                if on_batch is not None:
                    on_batch(rows)
            bar.update(len(skipped) + len(batch))
        session["completed"] = True
    finally:
        bar.close()
        if meter is not None and measuring:
            session["energy"] = meter.stop()
        if measuring:
            session["pass_s"] = time.perf_counter() - t_pass
            session["peak_vram_mb"], session["peak_vram_reserved_mb"] = peak_memory_mb(devices)
            session["peak_vram_mb_per_device"] = {str(d): torch.cuda.max_memory_allocated(d) / MB for d in devices}
        session["peak_rss_mb"] = peak_rss_mb()
        session["fused_projections"] = fused_groups(model)  # 0 unless the compiled engine fused them
        session.update(kernels_record(model))
        if cfg.engine == "compiled":  # graphs, breaks, skipped CUDA graphs of this session's decode steps
            session["compile_stats"] = {k: v - counts_at_start[k] for k, v in dynamo_counts().items()}


def _read_baseline(cfg: BenchConfig, task, dataset_sha: str) -> dict:
    summary, rows = res.read_results(cfg.baseline)
    if summary.get("task") != task.name:
        raise BenchmarkError(f"--baseline {cfg.baseline} is a {summary.get('task')} run; this is {task.name}")
    if (summary.get("dataset") or {}).get("sha256") != dataset_sha:
        raise BenchmarkError(f"--baseline {cfg.baseline} was run on another dataset (samples.jsonl sha256 differs)")
    # keys recorded later mean their old default in results written before (results.PROTOCOL_DEFAULTS)
    protocol = {**res.PROTOCOL_DEFAULTS, **(summary.get("protocol") or {})}
    dataset = summary.get("dataset") or {}
    # what moves cost or quality (figures refuse the same keys): batch size, max new tokens, device, ...
    keys = ("prompt", "max_new_tokens", "batch_size", "device", "dtype", "engine", "fuse", "attention", "ocr_tokens")
    theirs = {**{k: protocol.get(k) for k in keys}, "limit": dataset.get("limit")}
    ours = {**{k: getattr(cfg, k) for k in keys}, "dtype": cfg.dtype or "as saved", "limit": cfg.limit}
    differ = [f"{k} {theirs[k]!r} vs {ours[k]!r}" for k in ours if theirs[k] != ours[k]]
    if differ and not cfg.allow_mixed:
        raise BenchmarkError(f"--baseline {cfg.baseline} was run with another protocol ({'; '.join(differ)}); "
                             "re-run one of them with the same settings, or pass --allow-mixed")
    preds = {r["id"]: r["prediction"] for r in rows if r.get("prediction") is not None}
    return {"path": str(cfg.baseline), "summary": summary, "predictions": preds}


def bench_configs(models: list[str], out: str, **options) -> list[BenchConfig]:
    """One validated config per model (ValueError naming the option otherwise): `out` itself for a single
    model, `out/<name>` for several. Built before anything runs, so a bad option fails in a second."""
    if len(models) == 1:
        return [BenchConfig(model=models[0], out=out, **options)]
    if options.get("name"):
        raise ValueError("--name labels one model; with several MODELs each is named after its dir")
    return [BenchConfig(model=m, out=str(Path(out) / name), **options) for m, name in zip(models, _unique_names(models))]


def bench_many(configs: list[BenchConfig], out: str, *, progress: bool = True) -> tuple[list[tuple[str, dict]], list[dict]]:
    """Run each config; returns ([(results dir, summary)], failures).

    A single model's errors propagate as they are. With several, a model that fails is recorded in
    `out`/failures.json and the others go on.
    """
    if len(configs) == 1:
        return [(configs[0].out, run_bench(configs[0], progress=progress))], []
    results, failures = [], []
    for cfg in configs:
        try:
            results.append((cfg.out, run_bench(cfg, progress=progress)))
        # One bad checkpoint (unloadable, OOM, a kernel refusing a shape) must not stop a sweep:
        # record it with its message and go on; the caller exits non-zero.
        except (VlmslimError, torch.cuda.OutOfMemoryError, RuntimeError) as e:
            logger.error("%s failed: %s: %s", cfg.model, type(e).__name__, e)
            failures.append({"model": cfg.model, "out": cfg.out, "error": type(e).__name__, "message": str(e)})
        gc.collect()  # the failed run's frames held the model; free it before the next one
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / "failures.json", failures)
    return results, failures


def _unique_names(models: list[str]) -> list[str]:
    names: list[str] = []
    for m in models:
        base = name = model_label(m)
        k = 1
        while name in names:  # two checkpoints both called "final" get final, final-2
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names
