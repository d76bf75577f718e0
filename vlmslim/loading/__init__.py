"""Loading: a source (hub id, HF dir, vlmslim checkpoint, "demo", "random:<config>") -> model.

Below every step: it imports no step package. Steps build on it (quantize-at-load is
`vlmslim.quantization.load_quantized`; saving and the reload check are `vlmslim.checkpoint`).

Names are imported from their submodule on first use, so `from vlmslim.loading.sources import
resolve_source` or `vlmslim.loading.files` (what `vlmslim inspect` needs) does not import torch.
"""

import importlib

_EXPORTS = {
    "vlmslim.loading.skeleton": ("build_random_model", "empty_model"),
    "vlmslim.loading.sources": ("CONFIG_DIR", "DEMO_DIR", "RANDOM_PREFIX", "available_configs", "is_random",
                                "load_arch_config", "load_config", "model_class", "parse_dtype", "resolve_device",
                                "resolve_source"),
    "vlmslim.loading.files": ("check_weight_files",),
    "vlmslim.loading.placement": ("DEVICE_MAPS", "check_device_map", "model_devices", "parse_max_memory",
                                  "placement_summary", "spans_devices"),
    "vlmslim.loading.weights": ("load_model", "load_processor", "load_weights"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
