"""Architecture-only GPU study: what fewer image tokens do to LLaVA-1.5-7B's prefill and decode.

    python -m studies.tokens_gpu --out-dir $OUT                     # the study (one H200 run)
    python -m studies.tokens_gpu --report docs/gpu/tokens_gpu.json  # table + figure only

Random fp16 weights (quality is not measured), synthetic inputs with LLaVA's 576 image tokens + 16 text
tokens, reduced to K by `vlmslim.tokens` (visionzip for K < 576: it takes any K; the cost depends on K,
not on which tokens are kept). Per variant x K x batch x engine: time to first token (the prefill:
vision tower, projector, reduction and the language model over the whole prompt, synchronised), decode
ms/token (median of timed 64-token decodes after warm-up), peak allocated memory; compiled tokens are
compared with eager ones. The compiled engine uses the `cudagraphs` backend (seconds to compile).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import click
import torch

from vlmslim.benchmarks import random_weights as arch
from vlmslim.benchmarks.efficiency import measure_bandwidth_gb_s

logger = logging.getLogger("studies.tokens_gpu")

# name: (prune options, quantization recipe, image-token budgets)
VARIANTS = {
    "base": ({}, None, (576, 288, 144, 64)),
    "glu30": ({"glu": 0.3}, None, (64,)),
    "glu30+nf4": ({"glu": 0.3}, "nf4", (64,)),
}
NEW_TOKENS = 64


def study(args) -> dict:
    bandwidth = measure_bandwidth_gb_s(torch.device("cuda"))
    import transformers

    results = {"device": torch.cuda.get_device_name(), "bandwidth_gb_s": bandwidth, "date": time.strftime("%Y-%m-%d"),
               "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                            "python": platform.python_version()},
               "new_tokens": NEW_TOKENS, "compile_backend": "cudagraphs", "runs": []}
    for name in args.variants:
        prune, quant, budgets = VARIANTS[name]
        torch._dynamo.reset()
        try:
            model = arch.build(arch.ArchBenchConfig("llava-1.5-7b", out="-", prune=prune, quant=quant))
        except (ImportError, RuntimeError, ValueError) as e:  # e.g. no bitsandbytes: recorded, the study goes on
            logger.exception("%s failed to build", name)
            results["runs"].append({"variant": name, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        for k in budgets:
            for b in args.batches:
                cfg = arch.ArchBenchConfig("llava-1.5-7b", out="-", batch_size=b, max_new_tokens=NEW_TOKENS,
                                           engines=("eager", "compiled"), compile_backend="cudagraphs",
                                           image_tokens=None if k == 576 else k, token_method="visionzip")
                try:
                    rows = arch.measure(model, cfg, bandwidth)
                except (RuntimeError, ValueError) as e:
                    logger.exception("%s K=%d batch %d failed", name, k, b)
                    rows = [{"engine": "eager,compiled", "error": f"{type(e).__name__}: {e}"[:300]}]
                for r in rows:
                    r.update(variant=name, image_tokens=k, batch=b)
                    results["runs"].append(r)
                    logger.info("%s", r)
                save(results, args.out_dir)
        del model
        torch.cuda.empty_cache()
    return results


def save(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokens_gpu.json").write_text(json.dumps(results, indent=2))


def report(results: dict, out_dir: Path) -> None:
    """docs table (markdown) + figure: TTFT and decode ms/token against the image-token budget."""
    runs = [r for r in results["runs"] if "error" not in r]
    lines = [f"Device {results['device']}, {results['date']}, torch {results['versions']['torch']}, transformers "
             f"{results['versions']['transformers']}; {results['new_tokens']}-token answers; compiled backend "
             f"{results['compile_backend']}.", "",
             "| variant | image tokens | batch | engine | prompt tokens | TTFT ms | decode ms/token | images/s | "
             "peak GB | tokens = eager |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        match = f"{r['tokens_match_eager']}/{r['tokens_compared']}" if "tokens_match_eager" in r else ""
        lines.append(f"| {r['variant']} | {r['image_tokens']} | {r['batch']} | {r['engine']} | {r['prompt_tokens']} | "
                     f"{1000 * r['prefill_s']:.1f} | {r['decode_ms_per_token']:.2f} | "
                     f"{r['throughput_images_per_s']:.2f} | {r['peak_vram_mb'] / 1024:.1f} | {match} |")
    for r in results["runs"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r.get('image_tokens', '')} | {r.get('batch', '')} | error | "
                         f"{r['error'][:80]} | | | | | |")
    (out_dir / "tokens_gpu.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=150)
    base = [r for r in runs if r["variant"] == "base" and r["engine"] == "eager"]
    for b, color in ((1, "#1f77b4"), (8, "#d62728")):
        pts = sorted((r["image_tokens"], r) for r in base if r["batch"] == b)
        axes[0].plot([k for k, _ in pts], [1000 * r["prefill_s"] for _, r in pts], "o-", color=color,
                     label=f"base, batch {b}")
        for engine, ls in (("eager", "-"), ("compiled", "--")):
            d = sorted((r["image_tokens"], r["decode_ms_per_token"]) for r in runs
                       if r["variant"] == "base" and r["batch"] == b and r["engine"] == engine)
            axes[1].plot([k for k, _ in d], [v for _, v in d], "o" + ls, color=color, label=f"base, batch {b}, {engine}")
    for name, marker in (("glu30", "s"), ("glu30+nf4", "D")):
        for b, color in ((1, "#1f77b4"), (8, "#d62728")):
            for r in runs:
                if r["variant"] == name and r["batch"] == b and r["engine"] == "eager":
                    axes[0].scatter([r["image_tokens"]], [1000 * r["prefill_s"]], marker=marker, color=color,
                                    edgecolors="black", zorder=5, label=f"{name}, batch {b}")
    axes[0].set_ylabel("time to first token (ms, prefill incl. vision tower)")
    axes[1].set_ylabel("decode ms per token (per step of the batch)")
    for ax in axes:
        ax.set_xlabel("image tokens into the language model (of 576)")
        ax.set_xscale("log", base=2)
        ax.set_xticks([64, 144, 288, 576], ["64", "144", "288", "576"])
        ax.grid(True, color="0.9", lw=0.6)
        ax.legend(fontsize=7)
    fig.suptitle(f"LLaVA-1.5-7B shape, random fp16 weights: fewer image tokens ({results['device']}, "
                 f"{results['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "tokens_gpu.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("."))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--report", type=Path, help="Only rebuild table + figure from this JSON.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.report:
        report(json.loads(args.report.read_text()), args.report.parent)
        return
    args.variants = [v for v in args.variants.split(",") if v]
    args.batches = [int(b) for b in args.batches.split(",")]
    results = study(args)
    save(results, args.out_dir)
    try:
        report(results, args.out_dir)
    except ImportError as e:  # no matplotlib: `--report` rebuilds it elsewhere
        logger.warning("no figure: %s", e)
    click.echo(f"wrote {args.out_dir}/tokens_gpu.json")


if __name__ == "__main__":
    main()
