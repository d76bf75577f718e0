"""Architecture-only efficiency runs: `vlmslim bench --random-weights CONFIG`.

A shipped config (`configs/models/*.json`) gets random weights on the device, optionally pruned and/or
quantized in memory, and is fed synthetic inputs with the family's real image-token count. Only speed
and memory are measured; quality metrics are absent from the summary (never 0) and the summary says why.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vlmslim.benchmarks.devices import main_device, sync
from vlmslim.benchmarks.engine import ENGINES, CompiledDecoder, decode_attention, kernels_record
from vlmslim.benchmarks.generate import FirstTokenTimer
from vlmslim.census import census
from vlmslim.inputs import synthetic_inputs
from vlmslim.benchmarks.efficiency import measure_bandwidth_gb_s
from vlmslim.benchmarks.summary import environment, precision
from vlmslim.families import get_family
from vlmslim.io import atomic_dir, check_output_dir, write_json
from vlmslim.errors import BenchmarkError
from vlmslim.loading import (build_random_model, check_device_map, model_devices, parse_max_memory,
                             placement_summary, spans_devices)
from vlmslim.pruning import PruneConfig, prune
from vlmslim.quantization import quantize_model
from vlmslim.tokens import TokenSpec, check_supported, reduce_placeholders, reducing

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchBenchConfig:
    config: str  # shipped name (llava-1.5-7b) or a config.json path
    out: str
    batch_size: int = 1
    prompt_tokens: int = 16  # text tokens after the image
    max_new_tokens: int = 64
    engines: tuple[str, ...] = ("eager",)
    compile_backend: str = "inductor"  # or "cudagraphs" (no codegen; see engine.py)
    fuse: bool = True  # compiled engine: q|k|v and gate|up as one product each (vlmslim.fusion)
    attention: str = "split"  # compiled engine's decode attention: split (vlmslim.attention; CUDA + Triton) | sdpa
    dtype: str = "float16"
    device: str = "cuda"
    device_map: str | None = None  # auto | balanced | sequential: spread over the GPUs and the CPU
    max_memory: str | None = None  # with device_map: "0=8GiB,cpu=100GiB"
    prune: dict = field(default_factory=dict)  # PruneConfig fields (weight criteria only)
    quant: str | None = None
    image_tokens: int | None = None  # vlmslim.tokens: K image tokens per image into the language model
    token_method: str = "pool"
    repeats: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_tokens is not None:
            self.token_spec  # validates K and the method
        for name in ("batch_size", "prompt_tokens", "max_new_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (--{name.replace('_', '-')})")
        check_device_map(self.device_map, self.max_memory)
        # recorded as what runs: split-K attention needs the compiled engine, a CUDA device and Triton
        attention = decode_attention(self.attention, self.device)
        object.__setattr__(self, "attention", attention if "compiled" in self.engines else "sdpa")
        if self.device_map is not None and (self.quant or self.prune):
            raise ValueError("--device-map with --random-weights measures the unpruned, unquantized shape "
                             "(drop --quant/--glu/--heads)")
        bad = [e for e in self.engines if e not in ENGINES]
        if bad:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)} (--engine), got {bad}")

    @property
    def token_spec(self) -> TokenSpec | None:
        return None if self.image_tokens is None else TokenSpec(self.image_tokens, self.token_method, self.seed)


def arch_configs(models: list[str], out: str, *, engine: str | None = None, glu: float = 0.0, heads: float = 0.0,
                 **options) -> list[ArchBenchConfig]:
    """One config per shipped config name: `out` for one, `out/<name>` for several. `engine="compiled"`
    measures eager too (the compiled tokens are checked against eager's); `glu`/`heads` prune first."""
    engines = ("eager", "compiled") if engine == "compiled" else ("eager",)
    prune = {k: v for k, v in (("glu", glu), ("heads", heads)) if v}
    return [ArchBenchConfig(config=m, out=out if len(models) == 1 else str(Path(out) / Path(m).stem),
                            engines=engines, prune=prune, **options) for m in models]


def build(cfg: ArchBenchConfig):
    model = build_random_model(cfg.config, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed,
                               device_map=cfg.device_map, max_memory=parse_max_memory(cfg.max_memory))
    if "compiled" in cfg.engines and spans_devices(model):
        raise BenchmarkError(f"--engine compiled needs the whole model on one device; this one spans "
                             f"{', '.join(model_devices(model))} (--device-map): use --engine eager")
    if cfg.prune:
        prune(model, None, PruneConfig(**{"importance": "l2", **cfg.prune}))
    if cfg.quant:
        quantize_model(model, cfg.quant, device=cfg.device)
    gc.collect()  # cut-away / replaced weights sit in reference cycles until collected
    if torch.device(cfg.device).type == "cuda":
        torch.cuda.empty_cache()
    return model.eval()


@torch.inference_mode()
def eager_decode(model, inputs, n: int, device: torch.device):
    """(tokens (B, n), prefill s, decode s per step, scores (B, n, V)) from plain `generate`."""
    from transformers import LogitsProcessorList

    family = get_family(model)
    timer = FirstTokenTimer(lambda: sync(device))
    sync(device)
    t0 = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                         logits_processor=LogitsProcessorList([timer]), **family.generate_kwargs(0),
                         output_scores=True, return_dict_in_generate=True)
    sync(device)
    t1 = time.perf_counter()
    scores = torch.stack(out.scores, dim=1).float()
    prompt_len = family.echoed_prompt(inputs["input_ids"], model.config).shape[1]
    return (out.sequences[:, prompt_len:], timer.first - t0,
            (t1 - timer.first) / max(1, timer.steps - 1), scores)


def kv_bytes_per_step(model, family, batch: int, length: int) -> int:
    """K and V of every decoder layer read once per decode step at context `length`."""
    total = 0
    for layer in family.decoder_layers(model):
        k = layer.get_submodule(family.attn).get_submodule(family.k_proj)
        out = getattr(k, "out_features", None) or k.weight.shape[0]
        total += 2 * out * length * batch * torch.finfo(torch.float16).bits // 8
    return total


def measure(model, cfg: ArchBenchConfig, bandwidth_gb_s: float | None = None) -> list[dict]:
    """One row per engine: prefill s, decode ms/token, images/s, peak memory, roofline, token agreement."""
    family = get_family(model)
    device = main_device(model)
    inputs = {k: v.to(device) for k, v in synthetic_inputs(model, cfg.batch_size, cfg.prompt_tokens, cfg.seed).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    spec = cfg.token_spec
    if spec is not None:
        check_supported(model)
        inputs = reduce_placeholders(inputs, model.config.image_token_id, family.image_tokens(model.config), spec.k)
    with reducing(model, spec):
        return _measure(model, family, inputs, cfg, bandwidth_gb_s)


def _measure(model, family, inputs, cfg: ArchBenchConfig, bandwidth_gb_s: float | None) -> list[dict]:
    device = main_device(model)
    length, n = inputs["input_ids"].shape[1], cfg.max_new_tokens
    c = census(model)
    decode_bytes = sum(c["components"][k]["bytes"] for k in ("language", "lm_head") if k in c["components"])
    rows, eager_tokens, eager_scores = [], None, None
    for engine in cfg.engines:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        row = {"engine": engine, "batch_size": cfg.batch_size, "prompt_tokens": length, "new_tokens": n}
        if engine == "eager":
            eager_decode(model, inputs, 4, device)  # warm-up
            runs = [eager_decode(model, inputs, n, device) for _ in range(cfg.repeats)]
            eager_tokens, eager_scores = runs[0][0], runs[0][3]
            prefill, step = statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs)
        else:
            t = time.perf_counter()
            dec = CompiledDecoder(model, cfg.batch_size, length + n + 8, backend=cfg.compile_backend, fuse=cfg.fuse,
                                  attention=cfg.attention)
            row["fused_projections"], row["attention"] = dec.fused, dec.attention
            first = dec.decode(inputs, n, ignore_eos=True)  # compiles and records the graphs
            dec.decode(inputs, n, ignore_eos=True)
            row["compile_s"] = round(time.perf_counter() - t, 1)
            row["compile_stats"] = dec.compile_stats  # graphs, graph breaks, skipped CUDA graphs
            runs = [dec.decode(inputs, n, ignore_eos=True) for _ in range(cfg.repeats)]
            prefill = statistics.median(r.prefill_s for r in runs)
            step = statistics.median(r.decode_s / r.decode_steps for r in runs)
            if eager_tokens is not None:
                same = (first.tokens == eager_tokens).all(dim=0).long()
                agree = int(same.cumprod(0).sum())
                row.update(tokens_match_eager=agree, tokens_compared=n)
                if agree < n:  # how close eager's own top-2 was where they part (fp16 ties flip either way)
                    r = int((first.tokens[:, agree] != eager_tokens[:, agree]).nonzero()[0])
                    top2 = eager_scores[r, agree].topk(2).values
                    row["first_mismatch_top2_gap"] = float(top2[0] - top2[1])
        row.update(kernels_record(model))  # after the compiled engine's fusion: the fused layers' kernel
        row.update(prefill_s=prefill, decode_ms_per_token=1000 * step,
                   throughput_images_per_s=cfg.batch_size / (prefill + (n - 1) * step),
                   tokens_per_s=cfg.batch_size / step,
                   peak_vram_mb=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
                   weight_mb=c["total_bytes"] / 2**20, decode_weight_mb=decode_bytes / 2**20,
                   params=c["total_params"])
        if bandwidth_gb_s:
            floor = (decode_bytes + kv_bytes_per_step(model, family, cfg.batch_size, length + n // 2)) / (bandwidth_gb_s * 1e9)
            row.update(decode_floor_ms_per_token=1000 * floor, roofline_fraction=floor / step)
        rows.append(row)
        logger.info("%s", row)
    return rows


def bench_architecture(cfg: ArchBenchConfig) -> dict:
    """Build, measure, and write `cfg.out` (config + summary.json with efficiency only)."""
    check_output_dir(cfg.out, overwrite=False)
    device = torch.device(cfg.device)
    bandwidth = measure_bandwidth_gb_s(device) if device.type == "cuda" else None
    torch._dynamo.reset()  # a fresh model: stale compiled steps would count against the recompile limit
    model = build(cfg)
    rows = measure(model, cfg, bandwidth)
    main = rows[-1]
    summary = {
        "model": {"name": Path(cfg.out).name, "path": f"random:{cfg.config}", "family": model.config.model_type,
                  "precision": precision(census(model)),
                  "pruning": [{"kind": "prune", "method": "+".join(k for k in ("glu", "heads") if cfg.prune.get(k)),
                               "params": cfg.prune}] if cfg.prune else [],
                  "is_baseline": not cfg.prune and not cfg.quant and cfg.image_tokens is None, "random_weights": True,
                  "token_reduction": cfg.token_spec.to_dict() if cfg.token_spec else None},
        "task": "architecture-only", "n_samples": cfg.batch_size,
        "metrics": {}, "ci": {},
        "metric_notes": {"quality": "not measured: random weights (architecture-only run)"},
        "efficiency": {"latency_s_p50": main["prefill_s"] + (cfg.max_new_tokens - 1) * main["decode_ms_per_token"] / 1000,
                       "ttft_s_p50": main["prefill_s"], "decode_ms_per_token": main["decode_ms_per_token"],
                       "throughput_images_per_s": main["throughput_images_per_s"], "tokens_per_s": main["tokens_per_s"],
                       "peak_vram_mb": main["peak_vram_mb"], "model_size_mb": main["weight_mb"],
                       "params": main["params"], "energy_wh_per_sample": None,
                       "roofline_fraction": main.get("roofline_fraction"), "bandwidth_gb_s": bandwidth},
        "engines": rows,
        "environment": {**environment([device] if device.type == "cuda" else []), "processes": 1},
        "placement": placement_summary(model),
        "protocol": asdict(cfg),
    }
    with atomic_dir(cfg.out) as tmp:
        write_json(tmp / "summary.json", summary)
    return summary
