"""Train the embedded miniature VLM on synthetic shape scenes.

    python -m vlmslim.demo.train --out vlmslim/demo/model --device cuda --steps 4000

Training scenes come from their own RNG stream ("vlmslim-demo-train:<seed>:<i>"), disjoint from the
evaluation sets `vlmslim data synthetic --seed S` draws ("vlmslim-synthetic-v1:<S>:<i>"). The target is
each scene's first (canonical) reference caption, so greedy decoding has one right answer to learn.
Deterministic given the seed on one device type (cuDNN/cuBLAS determinism is requested on GPU).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass

import click
import numpy as np
import torch

from vlmslim.checkpoint import save_checkpoint
from vlmslim.manifest import new_manifest
from vlmslim.data.synthetic import captions, random_scene, render
from vlmslim.demo.build import CAPTION_PROMPT, DemoArchitecture, build_model, build_processor
from vlmslim.inputs import processor_inputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200
    train_scenes: int = 40000
    eval_scenes: int = 200
    seed: int = 0
    image_size: int = 64

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "train_scenes", "eval_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")


def scenes(prefix: str, seed: int, n: int, size: int):
    """(list of PIL images, list of canonical captions) for n scenes of one RNG stream."""
    imgs, caps = [], []
    for i in range(n):
        scene = random_scene(random.Random(f"{prefix}:{seed}:{i}"), size=size)
        imgs.append(render(scene, size))
        caps.append(captions(scene)[0])
    return imgs, caps


def encode(processor, images, caps, chunk: int = 2048):
    """pixel_values (N, 3, H, W) float32; input_ids / labels (N, L) with the prompt masked out (-100)."""
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_PROMPT}]}],
        add_generation_prompt=True)
    prompt_ids = processor(images=images[:1], text=[prompt], return_tensors="pt").input_ids[0].tolist()
    pixels = torch.cat([processor.image_processor(images[i:i + chunk], return_tensors="pt").pixel_values
                        for i in range(0, len(images), chunk)])
    tok = processor.tokenizer
    seqs = [tok(" " + c, add_special_tokens=False).input_ids + [tok.eos_token_id] for c in caps]
    width = len(prompt_ids) + max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, s in enumerate(seqs):  # right padding for training; generation pads left
        ids[i, : len(prompt_ids) + len(s)] = torch.tensor(prompt_ids + s)
        labels[i, len(prompt_ids): len(prompt_ids) + len(s)] = torch.tensor(s)
    return pixels, ids, labels, len(prompt_ids)


@torch.no_grad()
def exact_match(model, processor, images, caps, device, batch_size: int = 100) -> tuple[float, list[str]]:
    preds = []
    for i in range(0, len(images), batch_size):
        inputs = processor_inputs(model, processor, images[i:i + batch_size], [CAPTION_PROMPT] * len(images[i:i + batch_size]))
        inputs = {k: v.to(device) for k, v in inputs.items()}
        out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
        preds += [p.strip() for p in processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    return float(np.mean([p == c for p, c in zip(preds, caps)])), preds


def train(cfg: TrainConfig, arch: DemoArchitecture, device: str):
    torch.manual_seed(cfg.seed)
    if device.startswith("cuda"):
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
    processor = build_processor(arch)
    model = build_model(processor, arch, seed=cfg.seed).to(device).train()
    t0 = time.perf_counter()
    images, caps = scenes("vlmslim-demo-train", cfg.seed, cfg.train_scenes, cfg.image_size)
    pixels, ids, labels, prompt_len = encode(processor, images, caps)
    logger.info("encoded %d training scenes in %.1fs; sequence length %d (prompt %d)",
                len(caps), time.perf_counter() - t0, ids.shape[1], prompt_len)
    pixels, ids, labels = pixels.to(device), ids.to(device), labels.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5
                                              * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    losses, t0 = [], time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(ids), (cfg.batch_size,), generator=g).to(device)
        out = model(pixel_values=pixels[idx], input_ids=ids[idx], attention_mask=(ids[idx] != processor.tokenizer.pad_token_id).long(), labels=labels[idx])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        if step % 200 == 0 or step == cfg.steps - 1:
            logger.info("step %5d  loss %.4f  lr %.2e  %.1fs", step, np.mean(losses[-50:]), sched.get_last_lr()[0],
                        time.perf_counter() - t0)
    train_s = time.perf_counter() - t0
    model.eval()
    eval_images, eval_caps = scenes("vlmslim-synthetic-v1", 0, cfg.eval_scenes, cfg.image_size)
    em, preds = exact_match(model, processor, eval_images, eval_caps, device)
    logger.info("held-out exact match %.3f; e.g. %r (ref %r)", em, preds[0], eval_caps[0])
    record = {"config": asdict(cfg), "architecture": asdict(arch), "device": device,
              "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "train_seconds": round(train_s, 1), "first_loss": losses[0], "final_loss": float(np.mean(losses[-100:])),
              "heldout_exact_match": em, "heldout": "vlmslim data synthetic --seed 0, first "
              f"{cfg.eval_scenes} scenes", "target": "first reference caption of each scene"}
    return model.cpu(), processor, record


@click.command()
@click.option("--out", required=True, help="Checkpoint directory to write.")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@click.option("--steps", default=TrainConfig.steps, show_default=True)
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True)
@click.option("--lr", default=TrainConfig.lr, show_default=True)
@click.option("--train-scenes", default=TrainConfig.train_scenes, show_default=True)
@click.option("--seed", default=TrainConfig.seed, show_default=True)
@click.option("--overwrite", is_flag=True)
def main(out, device, steps, batch_size, lr, train_scenes, seed, overwrite):
    """Train the demo captioner and save it as a vlmslim checkpoint."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, train_scenes=train_scenes, seed=seed)
    model, processor, record = train(cfg, DemoArchitecture(), device)
    manifest = new_manifest("vlmslim-demo (trained from scratch)", model.config, seed=seed)
    manifest["training"] = record
    save_checkpoint(model, processor, out, manifest, overwrite=overwrite)
    click.echo(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
