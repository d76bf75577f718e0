"""`vlmslim demo`: the whole pipeline on the embedded model, offline, on a CPU.

data (synthetic eval + calibration sets) -> prune (GLU 30/50/70/80 %, heads 25/50 %, combined, a layer
drop) -> quantize (int8, nf4, pruned + nf4) -> bench every checkpoint (caption task, bootstrap CIs,
paired vs the base) -> figures. Every step writes under `out/` and is skipped when its artifact is
already there, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlmslim.errors import VlmslimError

# Kept in sync with vlmslim.checkpoint (importing it here would pull torch into `vlmslim -h`).
DEMO_DIR = Path(__file__).parent / "model"
MANIFEST = "vlmslim.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    name: str
    source: str = "base"  # the variant this one starts from
    prune: dict = field(default_factory=dict)  # PruneConfig fields
    quant: str | None = None  # recipe name (target: the language model); prune *or* quant: chain via `source`
    tokens: tuple[int, str] | None = None  # (K, method): bench the source checkpoint with K image tokens (of 64)


VARIANTS: tuple[Variant, ...] = (
    Variant("base"),
    Variant("glu30", prune={"glu": 0.3}),
    Variant("glu50", prune={"glu": 0.5}),
    Variant("glu70", prune={"glu": 0.7}),
    Variant("glu80", prune={"glu": 0.8}),  # 128 of 768 neurons kept: where this model's MLP breaks down
    Variant("heads25", prune={"heads": 0.25}),
    Variant("heads50", prune={"heads": 0.5}),
    Variant("glu30-heads25", prune={"glu": 0.3, "heads": 0.25}),
    Variant("drop1", prune={"drop_layers": 1}),  # the most redundant decoder layer, found on calibration data
    Variant("int8", quant="int8"),
    Variant("nf4", quant="nf4"),
    Variant("glu30-nf4", source="glu30", quant="nf4"),
    Variant("int4wo", quant="int4wo"),  # 4-bit weight-only on ATen tinygemm (vlmslim.int4), group size 128
    # Fewer image tokens (vlmslim.tokens) into the language model: 64 = the full 8 x 8 grid.
    Variant("tokens36", tokens=(36, "pool")),
    Variant("tokens16", tokens=(16, "pool")),
    Variant("tokens16-visionzip", tokens=(16, "visionzip")),
    Variant("tokens16-random", tokens=(16, "random")),
    Variant("tokens4", tokens=(4, "pool")),
    Variant("glu30-nf4-tokens16", source="glu30-nf4", tokens=(16, "pool")),
)


@dataclass(frozen=True)
class DemoConfig:
    out: str = "vlmslim-demo"
    n: int = 100  # evaluation scenes (synthetic seed `seed`: never seen in training)
    seed: int = 0
    calibration_n: int = 32
    calibration_seed: int = 7
    batch_size: int = 20
    bootstrap: int = 1000
    device: str = "cpu"
    importance: str = "maw"  # neuron criterion for the GLU variants (the seeds' weight criterion)
    variants: tuple[str, ...] = tuple(v.name for v in VARIANTS)
    energy: bool = True

    def __post_init__(self) -> None:
        for name in ("n", "calibration_n", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        known = {v.name for v in VARIANTS}
        unknown = [v for v in self.variants if v not in known]
        if unknown:
            raise ValueError(f"unknown demo variant(s) {unknown}; known: {', '.join(v.name for v in VARIANTS)}")


def _variants(cfg: DemoConfig) -> list[Variant]:
    chosen = [v for v in VARIANTS if v.name in cfg.variants]
    names = {v.name for v in chosen}
    missing = [v.source for v in chosen if v.source != "base" and v.source not in names]
    if missing:
        raise ValueError(f"variants {missing} are needed as sources; add them to --variants")
    return chosen


def _done(path: Path, marker: str) -> bool:
    return (path / marker).exists()


def make_checkpoint(v: Variant, cfg: DemoConfig, root: Path, calibration: Path) -> Path:
    from vlmslim.pruning import PruneConfig, prune_checkpoint
    from vlmslim.quantization import QuantSpec, make_recipe, quantize

    if v.name == "base" or (v.tokens and v.source == "base"):
        return DEMO_DIR
    if v.tokens:  # token reduction happens at bench time, on the source's checkpoint
        return root / "checkpoints" / v.source
    out = root / "checkpoints" / v.name
    if _done(out, MANIFEST):
        logger.info("checkpoint %s exists, skipped", out)
        return out
    src = DEMO_DIR if v.source == "base" else root / "checkpoints" / v.source
    if v.prune:
        options = dict(v.prune)
        if "glu" in options:
            options.setdefault("importance", cfg.importance)
        needs_data = options.get("importance") in ("activation", "hybrid") or isinstance(options.get("drop_layers"), int)
        prune_checkpoint(src, out, PruneConfig(**options, calibration=str(calibration) if needs_data else None,
                                               calibration_samples=cfg.calibration_n), device=cfg.device)
    else:
        quantize(src, out, QuantSpec(make_recipe(v.quant), target="language"), device=cfg.device)
    return out


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Run (or resume) the demo; returns {"out", "rows", "figures", "failures"}."""
    from vlmslim.benchmarks import bench
    from vlmslim.data import make_synthetic
    from vlmslim.figures import FiguresConfig, make_figures
    from vlmslim.io import write_json

    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "demo_config.json", asdict(cfg))
    eval_dir, calib_dir = root / "data" / "eval", root / "data" / "calibration"
    if not _done(eval_dir, "meta.json"):
        make_synthetic(eval_dir, n=cfg.n, seed=cfg.seed)
    if not _done(calib_dir, "meta.json"):
        make_synthetic(calib_dir, n=cfg.calibration_n, seed=cfg.calibration_seed)

    results, failures = {}, []
    base_results = root / "results" / "base"
    for v in _variants(cfg):
        res_dir = root / "results" / v.name
        try:
            ckpt = make_checkpoint(v, cfg, root, calib_dir)
            if not _done(res_dir, "summary.json"):
                bench(str(ckpt), str(eval_dir), str(res_dir), name=v.name, batch_size=cfg.batch_size, device=cfg.device,
                      bootstrap=cfg.bootstrap, energy=cfg.energy, seed=cfg.seed, progress=progress,
                      # offline and CPU-sized: BERTScore's roberta-large would be a 1.4 GB hub download
                      bertscore_model=None,
                      **({"image_tokens": v.tokens[0], "token_method": v.tokens[1]} if v.tokens else {}),
                      baseline=None if v.name == "base" else str(base_results))
            results[v.name] = res_dir
        except (VlmslimError, ValueError, RuntimeError) as e:  # recorded; the other variants go on
            logger.error("demo variant %s failed: %s", v.name, e)
            failures.append({"variant": v.name, "error": type(e).__name__, "message": str(e)})
    figures = root / "figures"
    make_figures([str(p) for p in results.values()], str(figures),
                 FiguresConfig(metric="cider", baseline="base" if "base" in results else None, overwrite=True))
    write_json(root / "failures.json", failures)
    return {"out": root, "rows": summary_rows(results), "figures": figures, "failures": failures}


def summary_rows(results: dict[str, Path]) -> list[dict]:
    import json

    rows = []
    for name, res_dir in results.items():
        s = json.loads((res_dir / "summary.json").read_text())
        eff, m, ci = s["efficiency"], s["metrics"], s["ci"]
        rows.append({
            "name": name, "cider": m.get("cider"), "cider_ci": ci.get("cider"), "bleu4": m.get("bleu4"),
            "caption_len": m.get("caption_len_mean"), "params_m": (eff.get("params") or 0) / 1e6,
            "size_mb": eff.get("model_size_mb"), "latency_s_p50": eff.get("latency_s_p50"),
            "ttft_s_p50": eff.get("ttft_s_p50"),
            "decode_ms_per_token": eff.get("decode_ms_per_token"),
        })
    return rows
