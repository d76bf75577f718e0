"""Does the compiled engine's decode step trace as one graph under each quantization recipe?

    python -m studies.graph_breaks --out docs/results/graph_breaks.json [--recipes int4wo,int8dq] [--device cpu]

For each recipe the demo model is quantized at load (language model), prefilled into a StaticCache as
`vlmslim.benchmarks.engine.CompiledDecoder.decode` does, and `torch._dynamo.explain` traces one decode
step (`CompiledDecoder._step`): graphs, graph breaks and their reasons. One graph = the whole step is
captured by one CUDA graph on a GPU; every break adds a host round trip per token. fp8 needs a GPU
(`--device cuda`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from transformers import StaticCache

from vlmslim.benchmarks.engine import CompiledDecoder
from vlmslim.manifest import library_versions
from vlmslim.quantization import load_quantized
from vlmslim.loading import load_model

logger = logging.getLogger("studies.graph_breaks")

RECIPES = ("none", "int8", "nf4", "int4wo", "int8wo", "int8dq", "fp8")


def explain_step(model, processor, device: str, attention: str = "sdpa") -> dict:
    from vlmslim.inputs import synthetic_inputs

    inputs = {k: v.to(device) for k, v in synthetic_inputs(model, 1, 8, 0).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    length = inputs["input_ids"].shape[1]
    dec = CompiledDecoder(model, 1, length + 4, compile=False, attention=attention)
    cache = StaticCache(config=dec.text_config, max_cache_len=dec.max_cache_len)
    mask = torch.zeros(1, dec.max_cache_len, dtype=torch.long, device=device)
    mask[:, :length + 1] = 1
    with torch.no_grad():
        out = model(**inputs, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1].argmax(-1)
        pos = torch.full((1, 1), length, device=device)
        torch._dynamo.reset()
        ex = torch._dynamo.explain(dec._step)(tok[:, None], pos, mask, cache)
    return {"graphs": ex.graph_count, "graph_breaks": ex.graph_break_count,
            "break_reasons": sorted({str(b.reason).splitlines()[0][:200] for b in ex.break_reasons})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipes", default="none,int8,nf4,int4wo,int8wo,int8dq")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rows = []
    for recipe in args.recipes.split(","):
        if recipe == "none":
            model, processor = load_model("demo", device=args.device)
        else:
            model, processor = load_quantized("demo", recipe, device=args.device)
        try:
            row = {"recipe": recipe, **explain_step(model.eval(), processor, args.device)}
        except Exception as e:  # noqa: BLE001 - a recipe whose step cannot be traced is a result too
            row = {"recipe": recipe, "error": f"{type(e).__name__}: {e}"[:300]}
        logger.info("%s", row)
        rows.append(row)
    result = {"study": "graph_breaks", "model": "demo", "device": args.device, "versions": library_versions(),
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
