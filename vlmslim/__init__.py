"""vlmslim: prune, quantize and benchmark vision-language models.

    import vlmslim
    model, processor = vlmslim.load_model("llava-hf/llava-1.5-7b-hf")        # or a dir, or "demo"
    model, step = vlmslim.prune(model, processor, vlmslim.PruneConfig(glu=0.3))   # in memory
    vlmslim.prune_checkpoint("demo", "ckpt/glu30", vlmslim.PruneConfig(glu=0.3))  # checkpoint -> checkpoint
    vlmslim.quantize("ckpt/glu30", "ckpt/glu30-nf4", "nf4")                  # a checkpoint step
    summary = vlmslim.bench("ckpt/glu30-nf4", "data/coco-val", "results/glu30-nf4")

README.md's Python section saves an in-memory result (`vlmslim.checkpoint.save_checkpoint` with
`vlmslim.manifest.new_manifest` + `vlmslim.pruning.record_step`).

Names are imported on first use, so `import vlmslim` (and the CLI's --help) stays free of torch.
"""

__version__ = "0.1.0"

_API = {
    "load_model": "vlmslim.loading",
    "save_checkpoint": "vlmslim.checkpoint",
    "census": "vlmslim.census",
    "prune": "vlmslim.pruning",
    "prune_checkpoint": "vlmslim.pruning",
    "PruneConfig": "vlmslim.pruning",
    "quantize": "vlmslim.quantization",
    "load_quantized": "vlmslim.quantization",
    "quantize_model": "vlmslim.quantization",
    "QuantSpec": "vlmslim.quantization",
    "RecoverConfig": "vlmslim.recovery",
    "recover_checkpoint": "vlmslim.recovery",
    "bench": "vlmslim.benchmarks",
    "make_figures": "vlmslim.figures",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vlmslim' has no attribute {name!r}")
