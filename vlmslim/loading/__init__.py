"""Loading: a source (hub id, HF dir, vlmslim checkpoint, "demo", "random:<config>") -> model.

Below every step: it imports no step package. Steps build on it (quantize-at-load is
`vlmslim.quantization.load_quantized`; saving and the reload check are `vlmslim.checkpoint`).
"""

from vlmslim.loading.skeleton import build_random_model, empty_model
from vlmslim.loading.sources import (CONFIG_DIR, DEMO_DIR, RANDOM_PREFIX, available_configs, is_random,
                                     load_arch_config, load_config, model_class, parse_dtype, resolve_device,
                                     resolve_source)
from vlmslim.loading.weights import check_weight_files, load_model, load_processor, load_weights

__all__ = ["CONFIG_DIR", "DEMO_DIR", "RANDOM_PREFIX", "available_configs", "build_random_model", "check_weight_files",
           "empty_model", "is_random", "load_arch_config", "load_config", "load_model", "load_processor",
           "load_weights", "model_class", "parse_dtype", "resolve_device", "resolve_source"]
