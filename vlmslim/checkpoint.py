"""Loading, saving and describing checkpoints.

A vlmslim checkpoint is a `save_pretrained` directory plus `vlmslim.json` (the manifest: base model,
ordered steps, architecture, census, sizes, versions) and a model-card `README.md`. Pruned shapes that
stock `from_pretrained` cannot rebuild (e.g. 22 of 32 heads: `LlamaConfig` refuses
hidden_size % heads != 0) are rebuilt here from the manifest's per-layer architecture.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoProcessor
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from vlmslim import __version__
from vlmslim.census import census
from vlmslim.errors import ModelLoadError
from vlmslim.families import get_family
from vlmslim.inputs import fixed_inputs
from vlmslim.io import atomic_dir, dir_size, write_json

logger = logging.getLogger(__name__)

MANIFEST = "vlmslim.json"
RANDOM_PREFIX = "random:"  # "random:llava-1.5-7b": configs/models/llava-1.5-7b.json with random weights
DEMO_DIR = Path(__file__).parent / "demo" / "model"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return None if dtype == "auto" else dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or 'auto', got {dtype!r}")
    return _DTYPES[dtype]


def _looks_like_path(src: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a slash is meant as a path.
    return src.startswith((".", "/", "~")) or src.rstrip("/").count("/") >= 2


def resolve_source(src: str | os.PathLike) -> str:
    """A local model directory or a hub id (checked for reachability by the loader); 'demo' = shipped model."""
    src = str(src)
    if src.startswith(RANDOM_PREFIX):  # architecture-only: a shipped config with random weights
        return src
    if src == "demo":
        if not (DEMO_DIR / "config.json").exists():
            raise ModelLoadError(f"the embedded demo model is missing from the installed package ({DEMO_DIR})")
        return str(DEMO_DIR)
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{src} is a file, not a model directory")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{src} is not a model directory (no config.json)")
        return str(path)
    if _looks_like_path(src):
        raise ModelLoadError(f"model path {src} does not exist")
    return src  # a hub id


def read_manifest(path: str | os.PathLike) -> dict | None:
    f = Path(path) / MANIFEST
    return json.loads(f.read_text()) if f.exists() else None


def load_config(src: str):
    if src.startswith(RANDOM_PREFIX):
        from vlmslim.random_model import load_arch_config

        return load_arch_config(src.removeprefix(RANDOM_PREFIX))
    try:
        return AutoConfig.from_pretrained(src)
    except OSError as e:
        if Path(src).exists():
            raise ModelLoadError(f"cannot read the config in {src}: {e}") from e
        raise ModelLoadError(
            f"cannot load {src!r}: not a local directory, and the hub is unreachable "
            "(offline or HF_HUB_OFFLINE=1); download it first or pass a local directory"
        ) from e
    except ValueError as e:  # unknown model_type in config.json
        raise ModelLoadError(f"{src} has a config transformers cannot read: {e}") from e


def model_class(config):
    name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(config.model_type)
    get_family(config)  # unsupported families fail here with the list of supported ones
    if name is None:
        raise ModelLoadError(f"model type {config.model_type!r} is not an image-text-to-text model")
    return getattr(transformers, name)


def load_model(src: str | os.PathLike, dtype=None, device: str = "cpu", quant=None):
    """(model in eval mode, processor or None) from a hub id, an HF dir, a vlmslim checkpoint, 'demo', or
    'random:<shipped config>' (random weights, no processor: for speed/memory work).

    `quant` quantizes at load (a `vlmslim.quantization` recipe); `dtype` None keeps the saved dtype.
    """
    src = resolve_source(src)
    config = load_config(src)
    cls = model_class(config)
    manifest = read_manifest(src) if Path(src).is_dir() else None
    torch_dtype = parse_dtype(dtype)
    if src.startswith(RANDOM_PREFIX):
        from vlmslim.random_model import build_random_model

        model = build_random_model(src.removeprefix(RANDOM_PREFIX), dtype=torch_dtype or torch.float16, device=device)
        if quant is not None:
            from vlmslim.quantization import quantize_model

            quantize_model(model, quant, device=device)
        return model, None  # no tokenizer/processor: synthetic inputs only
    if quant is not None:
        from vlmslim.quantization import load_quantized

        model = load_quantized(src, cls, config, manifest, quant, dtype=torch_dtype, device=device)
    elif getattr(config, "quantization_config", None) is not None:  # a saved bnb checkpoint
        from vlmslim.quantization import load_saved_quantized

        model = load_saved_quantized(src, cls, config, manifest, dtype=torch_dtype, device=device)
    else:
        model = load_weights(src, cls, config, manifest, torch_dtype, device)
    model.eval()
    return model, load_processor(src)


def load_weights(src: str, cls, config, manifest: dict | None, dtype, device: str):
    """The unquantized model: stock `from_pretrained`, or rebuilt from the manifest for pruned shapes."""
    if manifest and not manifest.get("stock_loadable", True):
        return _load_rebuilt(src, cls, config, manifest, dtype, device)
    return _load_stock(src, cls, dtype, device)


def _load_stock(src: str, cls, dtype, device: str):
    kwargs = {"dtype": dtype or "auto"}
    if device == "auto":
        kwargs["device_map"] = "auto"  # spread over GPUs/CPU for models bigger than one device
    try:
        model = cls.from_pretrained(src, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"cannot load weights from {src}: {e}") from e
    return model if device == "auto" else model.to(device)


def _load_rebuilt(src: str, cls, config, manifest: dict, dtype, device: str):
    """Stock `from_pretrained` through a class whose constructor cuts the config's (superset) shapes down to
    the manifest's architecture, so checkpoint key conversion, dtype and device placement stay transformers'."""
    from vlmslim.pruning.surgery import rebuilt_class

    model = _load_stock(src, rebuilt_class(cls, manifest["architecture"]), dtype, device)
    model.__class__ = cls  # the subclass only adds a constructor; later steps see the stock class
    return model


def load_processor(src: str):
    try:
        return AutoProcessor.from_pretrained(src)
    except (OSError, ValueError, ImportError, TypeError, KeyError) as e:
        # Qwen2.5-VL's processor needs torchvision; model-only dirs have no processor files.
        logger.warning("no processor loaded from %s (%s: %s)", src, type(e).__name__, str(e).splitlines()[0][:200])
        return None


# ---------------------------------------------------------------- manifest + save


def library_versions() -> dict[str, str | None]:
    out = {"python": platform.python_version(), "vlmslim": __version__}
    for pkg in ("torch", "transformers", "accelerate", "bitsandbytes", "safetensors"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_revision() -> str | None:
    """The vlmslim source revision when run from a git checkout (None from an installed wheel)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def new_manifest(source: str, config, prior: dict | None = None, seed: int | None = None) -> dict:
    """The manifest of a step's output: the input's manifest carried forward, or a fresh base record."""
    if prior is not None:
        manifest = json.loads(json.dumps(prior))  # deep copy
    else:
        manifest = {
            "format": "vlmslim-checkpoint/1",
            "base": {"model": source, "model_type": config.model_type,
                     "revision": getattr(config, "_commit_hash", None)},
            "steps": [],
            "architecture": None,
            "stock_loadable": True,
        }
    manifest["seed"] = seed
    return manifest


def save_checkpoint(model, processor, out: str | os.PathLike, manifest: dict, overwrite: bool = False) -> Path:
    """Write model + processor + manifest + model card atomically to `out`."""
    family = get_family(model)
    with atomic_dir(out, overwrite) as tmp:
        model.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        manifest = dict(manifest)
        manifest["family"] = family.model_type
        manifest["census"] = census(model)
        manifest["library_versions"] = library_versions()
        manifest["vlmslim_git_revision"] = git_revision()
        manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest["bytes_on_disk"] = dir_size(tmp)  # weights + processor, before the manifest/card
        write_json(tmp / MANIFEST, manifest)
        (tmp / "README.md").write_text(model_card(manifest))
    return Path(out)


def model_card(manifest: dict) -> str:
    base = manifest["base"]
    lines = [
        f"# vlmslim checkpoint of `{base['model']}`",
        "",
        f"Family `{manifest.get('family')}`; created {manifest.get('created')} by vlmslim "
        f"{manifest['library_versions']['vlmslim']} (git {manifest.get('vlmslim_git_revision')}).",
        "",
        "## Steps applied",
        "",
    ]
    steps = manifest.get("steps") or []
    lines += [f"{i + 1}. `{s.get('kind')}` {json.dumps(s.get('params', {}), sort_keys=True)}"
              for i, s in enumerate(steps)] or ["none (base model)"]
    if manifest.get("training"):
        t = manifest["training"]
        lines += ["", "## Training", "", f"Trained from scratch on {t.get('device_name')} in {t.get('train_seconds')} s: "
                  f"{json.dumps(t.get('config'), sort_keys=True)}; final loss {t.get('final_loss'):.3g}; "
                  f"held-out exact match {t.get('heldout_exact_match')} ({t.get('heldout')})."]
    lines += ["", "## Census", "", "| component | params | MB | linear layers by precision |", "|---|---:|---:|---|"]
    for comp, c in manifest["census"]["components"].items():
        kinds = ", ".join(f"{k}: {v}" for k, v in c["linear"].items()) or "-"
        lines.append(f"| {comp} | {c['params']:,} | {c['bytes'] / 1e6:.2f} | {kinds} |")
    loader = ("`AutoModelForImageTextToText.from_pretrained(path)` or `vlmslim.load_model(path)`"
              if manifest.get("stock_loadable", True) else
              "`vlmslim.load_model(path)` only (the pruned shapes are not expressible in the stock config)")
    lines += ["", f"Bytes on disk (weights + processor): {manifest['bytes_on_disk']:,}", "", f"Load with {loader}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- reload check


@torch.no_grad()
def reference_logits(model, processor=None, seed: int = 0) -> torch.Tensor:
    """Logits (float32, CPU) on the fixed input used by `verify_reload`."""
    inputs = fixed_inputs(model, processor, seed=seed)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return model.eval()(**inputs).logits.float().cpu()


def verify_reload(out: str | os.PathLike, expected: torch.Tensor, atol: float = 1e-5, device: str = "cpu") -> float:
    """Reload `out` in eval mode and compare its logits with `expected`; returns the max abs difference."""
    model, processor = load_model(out, device=device)
    got = reference_logits(model, processor)
    if got.shape != expected.shape:
        raise ModelLoadError(f"reloaded {out} gives logits of shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    diff = (got - expected).abs().max().item()
    if not diff <= atol:  # `not <=` also catches NaN
        raise ModelLoadError(f"reloaded {out} differs from the saved model: max |Δlogit| = {diff:.3g} > {atol:g}")
    logger.info("reload check of %s: max |Δlogit| = %.3g", out, diff)
    return diff


# ---------------------------------------------------------------- inspect


def _shapes(config) -> dict:
    family = get_family(config)
    text = family.get_text_config(config)
    vision = config.vision_config
    keys = ("hidden_size", "intermediate_size", "ffn_dim", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size")
    return {
        "language": {k: getattr(text, k) for k in keys if getattr(text, k, None) is not None},
        "vision": {k: getattr(vision, k) for k in (*keys, "depth", "num_heads", "image_size", "patch_size")
                   if getattr(vision, k, None) is not None},
    }


def describe(src: str | os.PathLike) -> dict:
    """Manifest + census + key shapes, without reading weights (the census of an unmanifested model
    comes from its architecture built on the meta device)."""
    from accelerate import init_empty_weights

    src = resolve_source(src)
    config = load_config(src)
    cls = model_class(config)
    manifest = read_manifest(src) if Path(src).is_dir() else None
    if manifest is not None:
        info_census = manifest["census"]
    else:
        with init_empty_weights():
            info_census = census(cls._from_config(config))
    return {
        "source": src,
        "model_type": config.model_type,
        "architecture": cls.__name__,
        "quantization_config": getattr(config, "quantization_config", None),
        "shapes": _shapes(config),
        "census": info_census,
        "bytes_on_disk": dir_size(src) if Path(src).is_dir() else None,
        "manifest": manifest,
    }
