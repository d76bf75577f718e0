"""Architecture-only GPU study: what pruning and quantization do to LLaVA-1.5-7B's speed and memory.

    python -m studies.llava7b_gpu --out-dir $OUT            # the full study (one H100 run)
    python -m studies.llava7b_gpu --variants base --batches 1 --engines eager,compiled
    python -m studies.llava7b_gpu --report docs/gpu/llava7b_gpu.json   # table + figure only

Random fp16 weights from configs/models/llava-1.5-7b.json (quality is meaningless and not measured),
synthetic inputs with LLaVA's real 576 image tokens + 16 text tokens. Per variant x batch x engine:
prefill s, decode ms/token (median of repeated timed decodes after warm-up), images/s for a 64-token
answer, peak allocated memory, weight bytes and the decode roofline fraction (weights + KV cache read
per step / measured copy bandwidth). Compiled greedy tokens are compared with eager ones.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # the checkout (outputs default below it)

from vlmslim.gemv import TUNED
from vlmslim.benchmarks import random_weights as arch
from vlmslim.fusion import fuse_projections
from vlmslim.benchmarks.efficiency import measure_bandwidth_gb_s
from vlmslim.census import census
from vlmslim.inputs import synthetic_inputs

logger = logging.getLogger("llava7b_gpu")

@dataclass(frozen=True)
class Variant:
    prune: dict = field(default_factory=dict)  # PruneConfig weight-criterion options
    quant: str | None = None  # recipe name
    kernel: str | None = None  # Int4WeightOnlyLinear decode kernel (vlmslim.int4.KERNELS); None = its default
    fused: bool = False  # q|k|v and gate|up as one product each (vlmslim.fusion)
    dtype: str = "float16"  # what the random weights and activations are built in
    attention: str = "sdpa"  # the compiled engine's decode attention: sdpa | split (vlmslim.attention)
    k_split: int = 1  # int4wo: tinygemm's split-K layout, the largest of 4 / 2 / 1 up to this that K allows


BASES = {
    "base": Variant(),
    "glu30": Variant({"glu": 0.3}),
    "glu50": Variant({"glu": 0.5}),
    "heads25": Variant({"heads": 0.25}),
    "glu30+heads25": Variant({"glu": 0.3, "heads": 0.25}),
    "int8": Variant(quant="int8"),
    "nf4": Variant(quant="nf4"),
    "glu30+nf4": Variant({"glu": 0.3}, "nf4"),
    "int4wo": Variant(quant="int4wo"),  # vlmslim.int4, group 128, default kernel ("auto": CUDA GEMV at batch 1)
    "int4wo-tinygemm": Variant(quant="int4wo", kernel="tinygemm"),  # ATen tinygemm (the default until 2026-12-06)
    "int4wo-triton": Variant(quant="int4wo", kernel="triton"),  # the same weights on vlmslim.gemv's Triton GEMV
    "int4wo-gemlite": Variant(quant="int4wo", kernel="gemlite"),  # ... on gemlite's GEMV (optional package)
    "int4wo-cuda": Variant(quant="int4wo", kernel="cuda"),  # ... on vlmslim.gemv_cuda (NVRTC, batch 1)
    "glu30+int4wo": Variant({"glu": 0.3}, "int4wo"),
    "fp8": Variant(quant="fp8"),  # vlmslim.fp8: e4m3 weight-only on vlmslim.gemv
    "glu30+fp8": Variant({"glu": 0.3}, "fp8"),
}
# Suffixes, in this order: "-fused" (vlmslim.fusion), "-bf16" (weights and activations in bf16: tinygemm computes
# in bf16, so an fp16 int4 model casts around every product), "-split" (vlmslim.attention's decode attention).
VARIANTS = dict(BASES)
VARIANTS.update({f"{name}-fused": replace(BASES[name], fused=True)
                 for name in ("base", "glu30", "int4wo", "int4wo-tinygemm", "int4wo-triton", "int4wo-gemlite",
                              "int4wo-cuda", "fp8")})
VARIANTS.update({f"{name}-bf16": replace(VARIANTS[name], dtype="bfloat16")
                 for name in ("base", "int4wo", "base-fused", "int4wo-fused", "int4wo-tinygemm-fused",
                              "int4wo-cuda-fused")})
VARIANTS.update({f"{name}-split": replace(v, attention="split") for name, v in list(VARIANTS.items()) if v.fused})
# "-ks2" / "-ks4": int4wo on tinygemm with its layout's K split 2 / 4 ways (vlmslim.int4, `set_k_split`)
VARIANTS.update({f"int4wo-fused-bf16{suffix}-ks{s}": replace(VARIANTS[f"int4wo-fused-bf16{suffix}"], k_split=s,
                                                             kernel="tinygemm")
                 for suffix in ("", "-split") for s in (2, 4)})
NEW_TOKENS = 64
CONFIG, DEVICE = "llava-1.5-7b", "cuda"  # what is built (a tests' smoke run swaps in the demo's config, CPU)
# --sdpa: which fused-attention kernels SDPA may pick (decode has one query row over the whole static cache)
SDPA = {"default": None, "efficient": ("cudnn", "flash"), "math": ("cudnn", "flash", "mem_efficient")}


def set_decode_options(sdpa: str, coordinate_descent: bool) -> None:
    """Process-wide attention backend and inductor tuning for every variant of one run (recorded in the JSON)."""
    for backend in SDPA[sdpa] or ():
        getattr(torch.backends.cuda, f"enable_{backend}_sdp")(False)
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = coordinate_descent


def build(name: str, target: str = "language"):
    from vlmslim.quantization import QuantSpec, make_recipe

    v = VARIANTS[name]
    spec = QuantSpec(make_recipe(v.quant), target=target) if v.quant else None
    model = arch.build(arch.ArchBenchConfig(CONFIG, out="-", prune=v.prune, quant=spec, dtype=v.dtype,
                                            device=DEVICE))
    if v.kernel:
        for m in model.modules():
            if hasattr(m, "set_kernel"):
                m.set_kernel(v.kernel)
    if v.fused:
        fuse_projections(model)
    if v.k_split > 1:  # after the fusion: the fused modules are new
        from vlmslim.int4 import Int4WeightOnlyLinear, k_split_fits

        for m in model.modules():
            if isinstance(m, Int4WeightOnlyLinear):
                fits = [s for s in (1, 2, 4) if s <= v.k_split and k_split_fits(m.in_features, m.group_size, s)]
                m.set_k_split(max(fits))
    return model


def measure(model, batch: int, engines: list[str], backend: str, bandwidth: float, variant: Variant) -> list[dict]:
    """The library's architecture-only measurement, in this study's (committed) JSON keys."""
    cfg = arch.ArchBenchConfig(CONFIG, out="-", batch_size=batch, max_new_tokens=NEW_TOKENS, device=DEVICE,
                               engines=tuple(engines), compile_backend=backend, fuse=variant.fused,
                               attention=variant.attention, dtype=variant.dtype)
    rows = []
    for r in arch.measure(model, cfg, bandwidth):
        row = {"batch": batch, "engine": r["engine"], "prompt_tokens": r["prompt_tokens"],
               "prefill_s": r["prefill_s"], "decode_ms_per_token": r["decode_ms_per_token"],
               "images_per_s": r["throughput_images_per_s"], "peak_allocated_gb": r["peak_vram_mb"] and r["peak_vram_mb"] * 2**20 / 1e9,
               "weight_gb": r["weight_mb"] * 2**20 / 1e9, "decode_weight_gb": r["decode_weight_mb"] * 2**20 / 1e9,
               "params": r["params"], "floor_ms_per_token": r["decode_floor_ms_per_token"],
               "roofline_fraction": r["roofline_fraction"]}
        row.update({k: r[k] for k in ("compile_s", "fused_projections", "tokens_match_eager", "tokens_compared",
                                      "first_mismatch_top2_gap", "int4_decode_kernels", "compile_stats") if k in r})
        rows.append(row)
    return rows


def study(args) -> dict:
    bandwidth = measure_bandwidth_gb_s(torch.device("cuda"))
    results = {"device": torch.cuda.get_device_name(), "bandwidth_gb_s": bandwidth,
               "versions": {"torch": torch.__version__, "python": platform.python_version()},
               "date": time.strftime("%Y-%m-%d"), "new_tokens": NEW_TOKENS, "compile_backend": args.backend,
               "sdpa": args.sdpa, "coordinate_descent_tuning": args.coordinate_descent,
               "runs": [], "memory": []}
    import transformers

    results["versions"]["transformers"] = transformers.__version__
    for name in args.variants:
        t = time.perf_counter()
        # Each variant is a new model: without a reset dynamo's per-function recompile limit (8) is hit by
        # the fifth variant and the "compiled" step silently runs eagerly.
        torch._dynamo.reset()
        model = build(name)
        engines = args.engines if not VARIANTS[name].quant or args.compiled_quant else ["eager"]
        for b in args.batches:
            try:
                # the engine fuses by default; unfused variants are measured unfused (build fused the others)
                rows = measure(model, b, engines, args.backend, bandwidth, VARIANTS[name])
            except (RuntimeError, ValueError) as e:  # recorded in the results; the study goes on
                logger.exception("%s batch %d failed", name, b)
                rows = [{"batch": b, "engine": ",".join(engines), "error": f"{type(e).__name__}: {e}"[:300]}]
            for row in rows:
                row.update(variant=name, build_s=round(time.perf_counter() - t, 1))
                results["runs"].append(row)
        del model
        torch.cuda.empty_cache()
        # every tuned kernel (CUDA GEMV, Triton GEMVs, split attention) and shape: the chosen config and all times
        results["tuned_kernels"] = dict(TUNED)
        checkpoint(results, args.out_dir)  # partial results survive a time-out
    for quant in args.memory_quants:
        for target in ("language", "vision", "all"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            from vlmslim.quantization import QuantSpec, make_recipe

            # arch.build collects the replaced fp16 weights, which would otherwise count as resident
            model = arch.build(arch.ArchBenchConfig("llava-1.5-7b", out="-",
                                                    quant=QuantSpec(make_recipe(quant), target=target)))
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated() / 1e9
            inputs = {k: v.cuda() for k, v in synthetic_inputs(model, batch_size=1).items()}
            inputs["pixel_values"] = inputs["pixel_values"].half()
            with torch.inference_mode():
                model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
            results["memory"].append({"recipe": quant, "target": target, "resident_gb": resident,
                                      "peak_allocated_gb": torch.cuda.max_memory_allocated() / 1e9,
                                      "weight_gb": census(model)["total_bytes"] / 1e9})
            logger.info("%s", results["memory"][-1])
            checkpoint(results, args.out_dir)
            del model
            gc.collect()
    return results


def checkpoint(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "llava7b_gpu.json").write_text(json.dumps(results, indent=2))


def report(results: dict, out_dir: Path, stem: str = "llava7b_gpu") -> None:
    """Markdown table + speed-vs-size figure next to the JSON (`stem`.md, `stem`.png)."""
    lines = [f"Device: {results['device']}; measured copy bandwidth {results['bandwidth_gb_s']:.0f} GB/s; "
             f"{results['versions']}; {results['date']}; {results['new_tokens']} new tokens after a 592-token "
             f"prompt (576 image + 16 text); compile backend {results['compile_backend']}; "
             f"SDPA {results.get('sdpa', 'default')}; coordinate-descent tuning "
             f"{results.get('coordinate_descent_tuning', False)}.", "",
             "| variant | batch | engine | weights GB | prefill s | decode ms/token | floor ms | roofline | images/s "
             "| peak alloc GB | compiled tokens = eager |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["runs"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['batch']} | {r['engine']} | | failed: {r['error']} "
                         "| | | | | | |")
            continue
        match = (f"{r['tokens_match_eager']}/{r['tokens_compared']}" if "tokens_match_eager" in r else "")
        if "first_mismatch_top2_gap" in r:
            match += f" (eager top-2 gap there {r['first_mismatch_top2_gap']:.3f})"
        lines.append(f"| {r['variant']} | {r['batch']} | {r['engine']} | {r['weight_gb']:.2f} | {r['prefill_s']:.3f} | "
                     f"{r['decode_ms_per_token']:.2f} | {r['floor_ms_per_token']:.2f} | {r['roofline_fraction']:.1%} | "
                     f"{r['images_per_s']:.2f} | {r['peak_allocated_gb']:.1f} | {match} |")
    if results["memory"]:
        lines += ["", "| recipe | target | weights GB | resident GB | peak allocated GB (batch 1, 8 tokens) |",
                  "|---|---|---:|---:|---:|"]
        lines += [f"| {m['recipe']} | {m['target']} | {m['weight_gb']:.2f} | {m['resident_gb']:.2f} | "
                  f"{m['peak_allocated_gb']:.2f} |" for m in results["memory"]]
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlmslim.figures.plots import annotate_points

    from matplotlib.ticker import FuncFormatter

    batches = sorted({r["batch"] for r in results["runs"] if "error" not in r})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 5), dpi=150, squeeze=False)
    axes = axes[0]
    for ax, batch in zip(axes, batches):
        floor = sorted({(r["weight_gb"], r["floor_ms_per_token"]) for r in results["runs"] if r["batch"] == batch})
        ax.plot([f[0] for f in floor], [f[1] for f in floor], color="0.4", ls=":", lw=1,
                label="bandwidth floor (weights + KV read once per step)")
        xy, texts = [], []
        for engine, marker, color in (("eager", "o", "#d62728"), ("compiled", "s", "#1f77b4")):
            pts = [r for r in results["runs"] if r["batch"] == batch and r["engine"] == engine and "error" not in r]
            if not pts:
                continue
            ax.scatter([r["weight_gb"] for r in pts], [r["decode_ms_per_token"] for r in pts], marker=marker,
                       color=color, s=30, zorder=4, label=f"{engine} decode")
            xy += [(r["weight_gb"], r["decode_ms_per_token"]) for r in pts]
            texts += [f"{r['variant']} ({r['roofline_fraction']:.1%} of floor)" for r in pts]
        ax.set_xlabel("weights (GB)")
        ax.set_ylabel("decode ms per token (per step of the batch; log)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v in (2, 3, 4, 6) else ""))
        ax.set_title(f"batch {batch}, {results['new_tokens']}-token answers")
        ax.grid(True, which="both", color="0.9", lw=0.6)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 1.6)  # headroom: the slowest point's label stays inside the axes
        fig.canvas.draw()  # the placer needs final axes limits and the renderer's text sizes
        annotate_points(ax, xy, texts, fontsize=6.5)
    fig.suptitle(f"LLaVA-1.5-7B shape, random weights (fp16; bf16 in -bf16 variants)\n"
                 f"decode speed vs weight size ({results['device']}, {results['date']})", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out_dir / f"{stem}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("."))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--engines", default="eager,compiled")
    ap.add_argument("--backend", default="inductor", choices=("inductor", "cudagraphs"))
    ap.add_argument("--compiled-quant", action="store_true", help="Also compile the bnb-quantized variants.")
    ap.add_argument("--memory-quants", default="int8,nf4", help="Recipes for the target x memory table ('' = none).")
    ap.add_argument("--sdpa", default="default", choices=tuple(SDPA),
                    help="Disable SDPA backends: efficient = no cuDNN/flash, math = no fused attention kernel.")
    ap.add_argument("--coordinate-descent", action="store_true",
                    help="Inductor's coordinate-descent tuning of its generated kernels (slower compile).")
    ap.add_argument("--report", type=Path, help="Only rebuild table + figure from this JSON.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.report:
        report(json.loads(args.report.read_text()), args.report.parent, args.report.stem)
        return
    args.variants = [v for v in args.variants.split(",") if v]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.engines = [e for e in args.engines.split(",") if e]
    args.memory_quants = [q for q in args.memory_quants.split(",") if q]
    set_decode_options(args.sdpa, args.coordinate_descent)
    results = study(args)
    checkpoint(results, args.out_dir)
    try:
        report(results, args.out_dir)
    except ImportError as e:  # no matplotlib on the GPU image: `--report` rebuilds it elsewhere
        logger.warning("no figure: %s", e)


if __name__ == "__main__":
    main()
