"""`vlmslim prune --streaming`: prune a checkpoint one decoder layer at a time, never holding the model.

    prune_streaming("ckpt/llava-7b", "ckpt/glu30", PruneConfig(glu=0.3, heads=0.25))

Weight criteria only: the scores of a layer are functions of that layer's weights, so each layer is read
from the safetensors shards (`safetensors.safe_open`), scored (`plan.score_layer`), selected and cut
(`prune.cut_layer`) exactly as the in-memory `prune` does, and written to its place in the output shards
at once. Two empty (meta) skeletons carry the shapes: `source` (the input, filled and emptied a layer
at a time) and `target` (cut to the plan up front: the output's names, shards and header offsets, the
synced config, census and manifest). Peak memory: one decoder layer (in + out) plus the largest other
tensor (the embeddings or lm_head), never the model. The output equals the in-memory path's file for
file; its manifest differs in time stamps and the reload check (tensor shapes and config rebuilt, not
logits: those need the whole model in memory).
"""

from __future__ import annotations

import copy
import ctypes
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import GenerationConfig

from vlmslim.checkpoint import finish_checkpoint
from vlmslim.errors import PruningError
from vlmslim.families import get_family
from vlmslim.io import atomic_dir, write_json
from vlmslim.loading import empty_model, is_random, load_config, load_processor, parse_dtype
from vlmslim.manifest import MANIFEST, model_card, new_manifest, read_manifest
from vlmslim.pruning.config import PruneConfig
from vlmslim.pruning.plan import make_plan, score_layer
from vlmslim.pruning.prune import check_request, cut_layer, kept_records, param_counts, record_step, step_record
from vlmslim.pruning.shards import ShardWriter, SourceShards, saved_keys
from vlmslim.pruning.surgery import sync_config

logger = logging.getLogger(__name__)

_LIBC = ctypes.CDLL(None)
RELOAD_CHECK = "shapes"  # the manifest's record of what the streaming path verified after writing


def streaming_refusal(config: PruneConfig) -> str | None:
    """Why `config` cannot be pruned layer by layer (one line), or None."""
    if config.needs_calibration:
        return (f"--streaming reads one layer's weights at a time, but {config.calibration_reason} needs "
                "calibration activations of the whole model; drop --streaming or use a weight criterion")
    if config.drop_layers:
        return "--streaming does not drop layers (yet); run --drop-layers without --streaming"
    if config.trim_vision:
        return "--streaming does not trim vision layers (yet); run --trim-vision without --streaming"
    return None


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS. glibc keeps freed blocks below its (adaptive) mmap threshold
    in its heaps: without this, layer after layer of freed 25 MB tensors grew the RSS of a 7B streaming
    prune from ~1 to 3.7 GiB (measured). A no-op where the C library has no malloc_trim."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _load_dtype(src: str, model_config, source: SourceShards) -> torch.dtype:
    """The dtype `load_model(src)` (from_pretrained, dtype "auto") gives: the config's, else the first float
    tensor's in the checkpoint."""
    dtype = parse_dtype(getattr(model_config, "dtype", None))
    if dtype is None:
        floats = [d for d in source.dtypes.values() if d in ("F16", "BF16", "F32", "F64")]
        if not floats:
            raise PruningError(f"{src}: no floating-point tensors to take the model dtype from")
        dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}[floats[0]]
    return dtype


def _fill(module: nn.Module, prefix: str, source: SourceShards) -> None:
    """Put the checkpoint's tensors for `module` (model keys under `prefix`) into its meta parameters, in
    each parameter's dtype (the cast from_pretrained makes)."""
    params = dict(module.named_parameters())
    tensors = source.read([prefix + n for n in params])
    for n, p in params.items():
        owner, _, attr = n.rpartition(".")
        setattr(module.get_submodule(owner) if owner else module, attr,
                nn.Parameter(tensors.pop(prefix + n).to(p.dtype), requires_grad=False))


def _write_config(target: nn.Module, src: str, directory: Path) -> None:
    """config.json + generation_config.json as `save_pretrained` writes them for the pruned model."""
    target.config.dtype = str(target.dtype).split(".")[1]
    target.config.architectures = [type(target).__name__]
    target.config.save_pretrained(directory)
    if target.can_generate():
        if (Path(src) / "generation_config.json").exists():  # what from_pretrained would have loaded
            target.generation_config = GenerationConfig.from_pretrained(src)
        target.generation_config.save_pretrained(directory)


def _check_written(directory: Path, target: nn.Module, manifest: dict) -> None:
    """The reload check without loading weights: the saved config (+ architecture) rebuilds exactly the
    shapes and names written, and every shard's header fits its file."""
    arch = manifest["architecture"] if not manifest["stock_loadable"] else None
    rebuilt = empty_model(load_config(str(directory)), arch, cls=type(target))
    rebuilt.tie_weights()
    want = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    if {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} != want:
        raise PruningError("internal: the written config does not rebuild the pruned shapes")
    written = set(SourceShards(directory, rebuilt).where)
    if written != set(saved_keys(rebuilt)):
        raise PruningError(f"internal: the written shards hold {len(written)} tensors, the config's model "
                           f"{len(saved_keys(rebuilt))}")


@torch.no_grad()
def prune_streaming(src: str | os.PathLike, out: str | os.PathLike, config: PruneConfig,
                    overwrite: bool = False) -> tuple[Path, dict]:
    """Prune checkpoint dir `src` into `out` layer by layer (atomic: `<out>.partial-<pid>`, then rename);
    returns (out, manifest). Same output as `prune_checkpoint(src, out, config)`."""
    started = time.perf_counter()
    src = str(src)
    reason = streaming_refusal(config)
    if reason:
        raise PruningError(reason)
    if is_random(src) or not Path(src).is_dir():
        raise PruningError(f"--streaming reads safetensors shards from a local checkpoint directory; {src} is not one")
    prior = read_manifest(src)
    model_config = load_config(src)
    arch = prior["architecture"] if prior and not prior.get("stock_loadable", True) else None
    source_model = empty_model(model_config, arch)
    source_model.tie_weights()  # tied parameters count once, as in the loaded model
    family = check_request(source_model, config)
    source = SourceShards(src, source_model)
    source_model.to(_load_dtype(src, model_config, source))
    target = empty_model(copy.deepcopy(model_config), arch, cls=type(source_model)).to(source_model.dtype)
    target.tie_weights()  # as from_pretrained leaves the in-memory model: a tied lm_head is not written
    plan = make_plan(source_model, family, config, None, None)  # uniform: shapes decide the counts
    tc = family.get_text_config(source_model.config)
    for i, layer in enumerate(family.decoder_layers(target)):  # the output's shapes (which units: later)
        cut_layer(family, layer, tc, plan, i, None, None, config.head_mode)
    stock = sync_config(target)
    logger.info("streaming prune of %s with %s", src, config.to_dict())

    params_before = param_counts(source_model)
    with atomic_dir(out, overwrite) as staging:
        writer = ShardWriter(target, staging)
        layers = family.decoder_layers(source_model)
        layer_prefix = f"{family.language}.{family.layers}."
        kept_mlp, kept_attn = [], []
        for i, layer in enumerate(tqdm(layers, desc="streaming layers", unit="layer", disable=None)):
            prefix = f"{layer_prefix}{i}."
            _fill(layer, prefix, source)
            glu, heads = score_layer(family, layer, tc, config, None, i)
            mlp, attn = cut_layer(family, layer, tc, plan, i, glu, heads, config.head_mode)
            kept_mlp += [mlp] if mlp else []
            kept_attn += [attn] if attn else []
            for name, t in layer.state_dict().items():
                if prefix + name in writer.saved_key:
                    writer.write(prefix + name, t)
            layer.to("meta")  # frees this layer's tensors
            _release_freed_memory()
        rest = [k for k in writer.model_keys() if not k.startswith(layer_prefix)]
        buffers = dict(target.named_buffers())
        for key in tqdm(rest, desc="other tensors", unit="tensor", disable=None):
            if key in buffers and key not in source.where:  # a persistent buffer the checkpoint lacks
                writer.write(key, buffers[key])
                continue
            tensor = source.read([key])[key].to(target.get_parameter_or_buffer(key).dtype)
            writer.write(key, tensor)
            del tensor
            _release_freed_memory()
        writer.close()

        _write_config(target, src, staging)
        processor = load_processor(src)
        if processor is not None:
            processor.save_pretrained(staging)
        step = step_record(config, None, plan, *kept_records(kept_mlp, kept_attn))
        step["stock_loadable"] = stock
        step["params_before"] = params_before
        step["params_after"] = param_counts(target)
        step["seconds"] = round(time.perf_counter() - started, 3)
        manifest = record_step(new_manifest(src, target.config, prior=prior, seed=config.seed), target, step)
        finish_checkpoint(target, staging, manifest)
        saved = read_manifest(staging)
        _check_written(staging, target, saved)
        saved["steps"][-1]["reload_check"] = RELOAD_CHECK
        write_json(staging / MANIFEST, saved)
        (staging / "README.md").write_text(model_card(saved))
    logger.info("streamed %s -> %s in %.1f s (stock loadable: %s)", src, out, time.perf_counter() - started, stock)
    return Path(out), saved
