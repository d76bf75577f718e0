"""Regenerate docs/img/frontier_example.png from FABRICATED results (until `vlmslim demo` exists).

The numbers are invented but plausible for LLaVA-1.5-7B on COCO captions on an H100 (fp16 / int8 / nf4
decode speed and peak memory follow DESIGN.md's measured anchors: 27.9 / 112.6 / 38.8 ms per token and
17.5 / 10.8 / 7.7 GB, ~15-token captions); every figure says "fabricated example" in its subtitle.

    pip install -e .   # once
    python docs/examples/make_example_figures.py                    # writes docs/img/frontier_example.png
    python docs/examples/make_example_figures.py --keep DIR         # also keep the results dirs + all figures
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from vlmslim.figures import FiguresConfig, make_figures

REPO = Path(__file__).resolve().parents[2]

# name, precision, pruning steps, CIDEr-D, latency p50 s, peak VRAM MB, size MB, energy Wh/sample
RUNS = [
    ("llava-1.5-7b", "16-bit", [], 1.102, 0.58, 17500, 13480, 0.041),
    ("int8", "int8", [], 1.095, 1.85, 10800, 7150, 0.112),
    ("nf4", "nf4", [], 1.061, 0.70, 7700, 3950, 0.050),
    ("fp4", "fp4", [], 1.012, 0.69, 7690, 3950, 0.049),
    ("glu30", "16-bit", [("glu", 0.3)], 0.981, 0.50, 14600, 10650, 0.036),
    ("heads25", "16-bit", [("heads", 0.25)], 0.902, 0.53, 16050, 12100, 0.038),
    ("drop4", "16-bit", [("layers", 4)], 0.764, 0.51, 15700, 11820, 0.037),
    ("glu30+heads25", "16-bit", [("glu", 0.3), ("heads", 0.25)], 0.829, 0.45, 13300, 9400, 0.033),
    ("glu30-nf4", "nf4", [("glu", 0.3)], 0.942, 0.63, 6800, 3120, 0.046),
]
CAPTIONS = ["a red circle on a grey background", "a blue square next to a green triangle",
            "two yellow circles above a black line", "a small green square in the corner"]


def _image(path: Path, rng: random.Random) -> None:
    im = Image.new("RGB", (160, 120), tuple(rng.randrange(150, 230) for _ in range(3)))
    draw = ImageDraw.Draw(im)
    for _ in range(2):
        x, y, r = rng.randrange(20, 140), rng.randrange(20, 100), rng.randrange(10, 25)
        colour = tuple(rng.randrange(0, 200) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=colour)
    im.save(path)


def write_results(root: Path, n_samples: int = 500, n_rows: int = 24, seed: int = 0) -> list[Path]:
    """One results dir per RUNS entry, with `n_rows` samples.jsonl rows over a tiny image set."""
    rng = random.Random(seed)
    data_dir = root / "data"
    (data_dir / "images").mkdir(parents=True)
    for i in range(n_rows):
        _image(data_dir / "images" / f"{i:04d}.png", rng)
    dirs = []
    for name, precision, steps, cider, latency, vram, size, energy in RUNS:
        run_dir = root / name
        run_dir.mkdir()
        width = 0.045 * (1 + 0.3 * (cider < 1))
        # Layer dropping counts layers; width pruning removes a fraction.
        pruning = [{"kind": k, "n": r, "importance": "bi"} if k == "layers" else {"kind": k, "ratio": r, "importance": "maw"}
                   for k, r in steps]
        summary = {
            "model": {"name": name, "path": f"checkpoints/{name}", "family": "llava", "precision": precision,
                      "pruning": pruning, "is_baseline": name == "llava-1.5-7b"},
            "task": "caption",
            "dataset": {"path": str(data_dir), "name": "coco-2017-val (fabricated)", "sha256": "ab12" * 16,
                        "limit": n_samples, "seed": 0},
            "n_samples": n_samples,
            "metrics": {"cider": cider, "bleu4": 0.30 * cider / 1.1, "meteor": 0.268 * (cider / 1.1) ** 0.4,
                        "rouge_l": 0.548 * (cider / 1.1) ** 0.3, "bertscore_f1": 0.912 * (cider / 1.1) ** 0.05},
            "efficiency": {"latency_s_p50": latency, "latency_s_p90": latency * 1.2, "peak_vram_mb": vram,
                           "model_size_mb": size, "energy_wh_per_sample": energy, "batch_size": 1,
                           "energy": {"basis": "gpu (measured)"}},
            "environment": {"device": "cuda:0 (NVIDIA H100 80GB HBM3)"},
            # One protocol for every run (as `vlmslim bench` records it): figures refuse mixed protocols.
            "protocol": {"task": "caption", "prompt": "Provide a one-sentence caption for the provided image.",
                         "max_new_tokens": 64, "batch_size": 1, "dtype": "as saved", "device": "cuda",
                         "ocr_tokens": False},
            "checkpoint_sha256": hashlib.sha256(name.encode()).hexdigest(),
            "data_dir": str(data_dir),
        }
        summary["ci"] = {k: [v * (1 - width / 2), v * (1 + width / 2)] for k, v in summary["metrics"].items()}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        with open(run_dir / "samples.jsonl", "w") as f:
            for i in range(n_rows):
                ref = CAPTIONS[i % len(CAPTIONS)]
                pred = ref if rng.random() < cider / 1.3 else rng.choice(CAPTIONS)
                score = max(0.0, rng.gauss(cider, 0.4)) if pred == ref else max(0.0, rng.gauss(0.3, 0.2))
                row = {"id": f"{i:04d}", "image": f"images/{i:04d}.png", "prediction": pred, "references": [ref],
                       "scores": {"cider": score}, "latency_s": latency, "ttft_s": 0.1, "tokens": 9}
                f.write(json.dumps(row) + "\n")
        dirs.append(run_dir)
    return dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="keep the fabricated results dirs and all figures here")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "img" / "frontier_example.png")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="vlmslim-example-"))
    dirs = write_results(root / "results")
    result = make_figures(dirs, root / "figures", FiguresConfig(metric="cider", note="fabricated example", overwrite=True))
    args.png.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.out_dir / "frontier_latency.png", args.png)
    if args.keep is None:
        shutil.rmtree(root)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
