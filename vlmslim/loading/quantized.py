"""Loading checkpoints that are already quantized.

Stock-loadable ones go through `from_pretrained` (it reads `quantization_config` from config.json and
rebuilds the bnb modules from its skip list). Pruned ones whose shapes `from_pretrained` cannot rebuild
are assembled here: the base architecture on the meta device, cut to the manifest's shapes, the
manifest's exact list of quantized layers swapped for empty bnb modules, then the saved tensors
(renamed from the checkpoint's key layout to the model's) loaded into them.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from vlmslim import fp8, int8dq, int8wo
from vlmslim.errors import ModelLoadError
from vlmslim.int4 import Int4WeightOnlyLinear
from vlmslim.loading.skeleton import empty_model

logger = logging.getLogger(__name__)

# bitsandbytes 0.50 logs at import, on CPUs with AVX512-BF16, that its optional fused CPU 4-bit kernel
# (a hub download through the `kernels` package) is unavailable — offline that is every 4-bit step, and
# there is nothing to do about it. Exactly these records are dropped (kept at DEBUG); every other
# bitsandbytes / kernels message passes.
_BNB_NOISE = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
}


class _DropBnbKernelNotice(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        logger.debug("bitsandbytes: %s", record.getMessage())
        return False


for _name, _prefix in _BNB_NOISE.items():  # on the emitting loggers, before bitsandbytes is imported
    if not any(isinstance(f, _DropBnbKernelNotice) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_DropBnbKernelNotice(_prefix))


INT4_QUANT_METHOD = "vlmslim-int4wo"  # config.json marker of vlmslim.int4 checkpoints (stock loading refuses it)
# vlmslim's own formats: always rebuilt from the manifest (their markers make stock from_pretrained refuse)
OWN_QUANT_METHODS = {INT4_QUANT_METHOD: "int4wo", fp8.QUANT_METHOD: "fp8", int8wo.QUANT_METHOD: "int8wo",
                     int8dq.QUANT_METHOD: "int8dq"}


def _quant_method(config) -> str | None:
    qc = getattr(config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    return getattr(method, "value", method)


def load_saved_quantized(src: str, cls, config, manifest: dict | None, dtype=None, device: str = "cpu",
                         device_map: str | None = None, max_memory: dict | None = None):
    """A saved bnb checkpoint on `device`; float parts in `dtype` (None: as saved). `device_map` spreads a
    stock-loadable one over devices (rebuilt ones — pruned shapes, int4wo — load on one device)."""
    own = OWN_QUANT_METHODS.get(_quant_method(config))
    if device_map is not None and not (manifest is None or manifest.get("stock_loadable", True)) \
            or device_map is not None and own:
        raise ModelLoadError(f"{src}: --device-map needs a stock-loadable quantized checkpoint; this one is rebuilt "
                             "from its manifest and loads on one device (use --device)")
    if own:
        if manifest is None:
            raise ModelLoadError(f"{src} is an {own} checkpoint without its vlmslim.json; it cannot be rebuilt")
        return rebuild_quantized(src, cls, config, manifest, dtype, device)
    if manifest is None or manifest.get("stock_loadable", True):
        # device_map pins the model where asked: without it transformers puts bnb models on cuda:0 if present.
        placement = {"device_map": device_map, "max_memory": max_memory} if device_map else {"device_map": {"": device}}
        try:
            return cls.from_pretrained(src, dtype=dtype or "auto", **placement)
        except OSError as e:
            raise ModelLoadError(f"cannot load weights from {src}: {e}") from e
    return rebuild_quantized(src, cls, config, manifest, dtype, device)


def empty_bnb_linear(params: dict, linear: nn.Linear) -> nn.Module:
    """The empty (meta) quantized module that replaces `linear` under a recipe's `params()` record
    ({"name": "int8", "int8_threshold": 6.0}, {"name": "nf4"|"fp4", "double_quant", "compute_dtype"}, or
    {"name": "int4wo", "group_size"} / {"name": "fp8" | "int8wo" | "int8dq"}: vlmslim's own, not bitsandbytes)."""
    bias = linear.bias is not None
    if params["name"] == "int4wo":
        return Int4WeightOnlyLinear(linear.in_features, linear.out_features, bias, int(params["group_size"]),
                                    device="meta", bias_dtype=linear.weight.dtype)
    if params["name"] == "fp8":
        return fp8.Fp8WeightOnlyLinear(linear.in_features, linear.out_features, bias, device="meta",
                                       bias_dtype=linear.weight.dtype)
    if params["name"] == "int8wo":
        return int8wo.Int8WeightOnlyLinear(linear.in_features, linear.out_features, bias, device="meta",
                                           bias_dtype=linear.weight.dtype)
    if params["name"] == "int8dq":
        return int8dq.Int8DynamicLinear(linear.in_features, linear.out_features, bias, device="meta",
                                        bias_dtype=linear.weight.dtype)
    import bitsandbytes as bnb  # imported late: it logs at import and is only needed for quantized models

    if params["name"] == "int8":
        return bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
                                   threshold=float(params.get("int8_threshold", 6.0)), device="meta")
    if params["name"] in ("nf4", "fp4"):
        compute = params.get("compute_dtype")
        return bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias,
                                 compute_dtype=getattr(torch, compute) if compute else None,
                                 compress_statistics=bool(params.get("double_quant")), quant_type=params["name"],
                                 quant_storage=torch.uint8, device="meta")
    raise ModelLoadError(f"unknown quantization recipe {params.get('name')!r} in the manifest")


def rebuild_quantized(src: str, cls, config, manifest: dict, dtype=None, device: str = "cpu") -> nn.Module:
    """Assemble a quantized checkpoint from its manifest (architecture + exact quantized layer list)."""
    record = manifest.get("quantization")
    if not record:
        raise ModelLoadError(f"{src} has a quantization_config but its vlmslim.json has no quantization record; "
                             "it was not written by `vlmslim quantize`")
    plain = copy.deepcopy(config)
    plain.quantization_config = None  # build float modules; the bnb ones are put in below, by exact name
    model = empty_model(plain, manifest.get("architecture"), cls=cls)
    for name in record["target"]["quantized_modules"]:
        model.set_submodule(name, empty_bnb_linear(record["recipe"], model.get_submodule(name)))
    state = checkpoint_state(src, model)
    load_bnb_state(model, state, device)
    from transformers import BitsAndBytesConfig

    saved = config.quantization_config  # what config.json holds: the skip list that rebuilds these modules
    if _quant_method(config) in OWN_QUANT_METHODS:
        model.config.quantization_config = copy.deepcopy(saved)
    else:
        model.config.quantization_config = (BitsAndBytesConfig.from_dict(saved) if isinstance(saved, dict)
                                            else copy.deepcopy(saved))
    if dtype is not None:
        for p in model.parameters():  # float parts only: bnb weights keep their packed dtypes
            if p.is_floating_point():
                p.data = p.data.to(dtype)
    return model


def checkpoint_state(src: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint dir, keyed as in `model.state_dict()`.

    transformers 5 saves some families in their legacy key layout (LLaVA and PaliGemma write
    `language_model.model.layers...` for the module `model.language_model.layers...`); its own
    conversion mapping renames them back, as `from_pretrained` does.
    """
    from safetensors.torch import load_file

    files = sorted(Path(src).glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{src} has no *.safetensors weights")
    rename = key_renamer(model)
    state = {}
    for f in files:
        for key, tensor in load_file(f).items():
            state[rename(key)] = tensor
    return state


def key_renamer(model: nn.Module):
    """checkpoint key -> `model.state_dict()` key, by transformers' own conversion mapping (renames only)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    conversions = get_model_conversion_mapping(model, add_legacy=True)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    if converters:  # tensor-merging conversions (fused MoE experts) are not a key rename
        raise ModelLoadError(f"{type(model).__name__} checkpoints need weight conversions vlmslim cannot rebuild")
    meta = model.state_dict()
    return lambda key: rename_source_key(key, renamings, [], model.base_model_prefix, meta)[0]


def load_bnb_state(model: nn.Module, state: dict[str, torch.Tensor], device: str = "cpu") -> None:
    """Fill a meta skeleton holding empty bnb modules with saved tensors (pops what it uses from `state`)."""
    import bitsandbytes as bnb

    for name, module in model.named_modules():
        prefix = f"{name}."
        if isinstance(module, bnb.nn.Linear4bit):
            weight = state.pop(prefix + "weight")
            # absmax, quant_map, nested_*, quant_state.bitsandbytes__nf4: bnb rebuilds its QuantState
            stats = {k[len(prefix + "weight."):]: state.pop(k) for k in
                     [k for k in state if k.startswith(prefix + "weight.")]}
            module.weight = bnb.nn.Params4bit.from_prequantized(weight, stats, requires_grad=False,
                                                                device=torch.device(device), module=module)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            weight = state.pop(prefix + "weight").to(device)
            scb = state.pop(prefix + "SCB").to(device)
            state.pop(prefix + "weight_format", None)  # always "row" in bnb >= 0.45
            module.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False, CB=weight,
                                              SCB=scb)
    _missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    still_meta = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if unexpected or still_meta:
        raise ModelLoadError(f"checkpoint does not match its manifest (unexpected: {unexpected[:3]}, "
                             f"not loaded: {still_meta[:3]})")
    model.to(device)
