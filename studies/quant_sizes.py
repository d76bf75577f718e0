"""Bytes on disk of LLaVA-1.5-7B-shaped checkpoints (random weights) per quantization recipe × target.

Three numbers per row, so each checks the others:
  analytic   `expected_bytes` on the full-depth model built on the meta device (no memory);
  per-layer  every distinct Linear shape quantized once at real width, its saved tensors measured, times
             its count, plus the float remainder (full depth, measured per layer);
  saved      one real `save_pretrained` of a reduced-depth model (--text-layers/--vision-layers, real
             widths) next to the analytic value *for that reduced model*.

    python -m studies.quant_sizes --device cpu                                   # 2+2 layers, ~2 GB RAM
    python -m studies.quant_sizes --device cuda --text-layers 32 --vision-layers 24 \
        --recipes nf4 --targets language --verify                                   # a full 7B save + reload

--verify runs the whole `vlmslim quantize` step (reference logits, reload check, SQNR) instead of a bare
save; on a CPU that means fp16 forwards of the real widths (slow).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import click
import torch
from safetensors.torch import save_file
from torch import nn

from vlmslim.checkpoint import save_checkpoint
from vlmslim.loading import CONFIG_DIR, load_model
from vlmslim.manifest import new_manifest
from vlmslim.quantization import (QuantSpec, expected_bytes, make_recipe, param_inventory,
                                  quantize, quantize_model, resolve_target, safetensors_bytes)

logger = logging.getLogger("quant_sizes")
RECIPES = {"int8": ("int8", {}), "nf4": ("nf4", {}), "nf4-dq": ("nf4", {"double_quant": True}),
           "fp4": ("fp4", {})}
ROOT = Path(__file__).resolve().parents[1]


def build(config_path: Path, text_layers: int | None, vision_layers: int | None, device: str | None):
    """fp16 LLaVA from a config; device None = meta (shapes only), else random weights there."""
    from transformers import AutoConfig, LlavaForConditionalGeneration

    config = AutoConfig.from_pretrained(config_path)
    if text_layers:
        config.text_config.num_hidden_layers = text_layers
    if vision_layers:
        config.vision_config.num_hidden_layers = vision_layers
    with torch.device(device or "meta"):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.float16)
    return model.eval()


def per_layer_bytes(meta_model, recipe, device: str) -> dict[tuple, int]:
    """{(out, in, bias): saved tensor bytes of one real-width quantized Linear} for every distinct shape."""
    quantizable = set(resolve_target(meta_model, "all").quantize)  # every target's layers; not lm_head
    shapes = {(m.out_features, m.in_features, m.bias is not None)
              for n, m in meta_model.named_modules() if n in quantizable}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for o, i, bias in sorted(shapes):
            linear = nn.Linear(i, o, bias=bias, dtype=torch.float16)
            nn.init.normal_(linear.weight, std=0.02)  # transformers' init for Llama/CLIP-sized layers
            q = recipe.quantize_linear(linear, device)
            state = {k: v.detach().contiguous().cpu() for k, v in q.state_dict().items()}
            save_file(state, f"{tmp}/layer.safetensors")
            out[(o, i, bias)] = safetensors_bytes(tmp)["payload"]
    return out


def extrapolate(meta_model, target, per_layer: dict) -> int:
    """Measured per-layer bytes × counts + the float remainder (exact: untouched fp16 tensors)."""
    chosen = set(target.quantize)
    counts = Counter((m.out_features, m.in_features, m.bias is not None)
                     for n, m in meta_model.named_modules() if n in chosen)
    floats = expected_bytes(meta_model, None, ())["total"]
    quantized_float = sum(2 * (o * i + (o if b else 0)) * c for (o, i, b), c in counts.items())
    return floats - quantized_float + sum(per_layer[k] * c for k, c in counts.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=CONFIG_DIR / "llava-1.5-7b.json")
    ap.add_argument("--device", default="cpu", help="where layers are quantized (cpu, cuda)")
    ap.add_argument("--text-layers", type=int, default=2, help="decoder layers of the saved model")
    ap.add_argument("--vision-layers", type=int, default=2, help="vision layers of the saved model")
    ap.add_argument("--recipes", default="int8,nf4,nf4-dq", help=f"comma list of {sorted(RECIPES)}")
    ap.add_argument("--targets", default="language,vision,all")
    ap.add_argument("--verify", action="store_true", help="full quantize step: logits, reload check, SQNR")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch dir for the saves [a temp dir]")
    ap.add_argument("--out", type=Path, default=ROOT / "results/quant_sizes", help="where results.json goes")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("vlmslim.loading.weights").setLevel(logging.ERROR)  # "no processor": expected, no processor saved
    recipes = {k: make_recipe(RECIPES[k][0], **RECIPES[k][1]) for k in args.recipes.split(",")}
    targets = args.targets.split(",")

    full = build(args.config, None, None, None)
    reduced_meta = build(args.config, args.text_layers, args.vision_layers, None)
    rows = [{"recipe": "fp16", "target": "-", "analytic_full": expected_bytes(full, None, ())["total"]}]
    for key, recipe in recipes.items():
        recipe = recipe.resolved(torch.float16)
        t0 = time.time()
        per_layer = per_layer_bytes(full, recipe, args.device)
        logger.info("%s: per-layer measurement of %d shapes in %.1fs", key, len(per_layer), time.time() - t0)
        for target_name in targets:
            target = resolve_target(full, target_name)
            reduced_target = resolve_target(reduced_meta, target_name)
            rows.append({"recipe": key, "target": target_name, "layers": len(target.quantize),
                         "analytic_full": expected_bytes(full, recipe, target)["total"],
                         "per_layer_full": extrapolate(full, target, per_layer),
                         "analytic_reduced": expected_bytes(reduced_meta, recipe, reduced_target)["total"],
                         "per_layer_reduced": extrapolate(reduced_meta, reduced_target, per_layer)})

    work = Path(args.workdir or tempfile.mkdtemp(prefix="quant_sizes-"))
    try:
        src = work / "src"
        if not src.exists():
            model = build(args.config, args.text_layers, args.vision_layers, args.device)
            save_checkpoint(model, None, src, new_manifest(str(args.config), model.config))
            del model
        for row in rows[1:]:
            spec = QuantSpec(recipes[row["recipe"]], target=row["target"])
            out = work / f"{row['recipe']}-{row['target']}"
            t0 = time.time()
            if args.verify:
                record = quantize(src, out, spec, device=args.device, overwrite=True)
                row.update(sqnr_db=record["sqnr_db"], reload_max_abs_diff=record["reload_max_abs_diff"])
            else:  # the same in-memory quantization and save, without the forwards
                model, _ = load_model(src, device=args.device)
                quantize_model(model, spec, args.device)
                model.save_pretrained(out)
                del model
            row["saved_reduced"] = safetensors_bytes(out)
            row["seconds"] = round(time.time() - t0, 1)
            shutil.rmtree(out)
            logger.info("%s/%s: saved %d, analytic %d", row["recipe"], row["target"],
                        row["saved_reduced"]["payload"], row["analytic_reduced"])
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    config_name = args.config.resolve()
    config_name = config_name.relative_to(ROOT) if config_name.is_relative_to(ROOT) else config_name
    meta = {"config": str(config_name), "device": args.device, "text_layers": args.text_layers,
            "vision_layers": args.vision_layers, "verify": args.verify,
            "full_params": sum(p.numel() for p in full.parameters()),
            "inventory_tensors": len(param_inventory(full))}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "table.md").write_text(table(rows, args.text_layers, args.vision_layers) + "\n")
    click.echo(table(rows, args.text_layers, args.vision_layers))
    return 0


def table(rows, text_layers, vision_layers) -> str:
    fp16 = rows[0]["analytic_full"]
    lines = ["| recipe | target | quantized Linears | analytic GB | measured per layer GB (Δ bytes) | × fp16 | "
             f"{text_layers}+{vision_layers}-layer save: saved bytes (Δ vs analytic) |",
             "|---|---|---:|---:|---:|---:|---:|",
             f"| fp16 | - | 0 | {fp16 / 1e9:.3f} | - | 1.00 | - |"]
    for r in rows[1:]:
        saved = r.get("saved_reduced", {}).get("payload")
        saved = "-" if saved is None else f"{saved:,} ({saved - r['analytic_reduced']:+d})"
        lines.append(f"| {r['recipe']} | {r['target']} | {r['layers']} | {r['analytic_full'] / 1e9:.3f} | "
                     f"{r['per_layer_full'] / 1e9:.3f} ({r['per_layer_full'] - r['analytic_full']:+d}) | "
                     f"{r['per_layer_full'] / fp16:.3f} | {saved} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
