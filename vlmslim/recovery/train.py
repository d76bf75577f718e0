"""The distillation loop: teacher frozen in inference mode, student trained on the answer tokens.

One step: the teacher's and the student's logits at the answer positions (`Batch.keep`), the loss of
`losses.py`, AdamW with gradient clipping, linear warm-up then cosine decay to 0. Every step's losses go
to the history (and to `loss.jsonl` in the resume dir as they happen).

Resume: every `save_every` steps the trainable tensors, the optimizer and scheduler states and the
history are written atomically to `state_dir/state.pt`. The batch of step s is a function of (seed, s)
alone (`batches.step_indices`) and nothing else in a step is random, so a run killed after a save and
resumed ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from vlmslim.errors import RecoveryError
from vlmslim.families import first_param_device
from vlmslim.recovery.batches import Batch
from vlmslim.recovery.config import RecoverConfig
from vlmslim.recovery.losses import agreement, ce_loss, hidden_loss, kd_loss
from vlmslim.recovery.methods import METHODS, trainable

logger = logging.getLogger(__name__)

STATE = "state.pt"
LIVE_LOG = "loss.jsonl"


@dataclass
class TrainResult:
    model: nn.Module  # as trained (LoRA still unmerged: `METHODS[...].finish` makes it plain)
    history: list[dict]  # one row per step: step, loss, kd, ce, hidden, agreement, lr, tokens
    seconds: float  # training wall time of this process (a resumed run counts its own part)
    tokens: int  # real tokens the student processed in this process
    resumed_from: int | None = None
    peak_memory_mb: dict = field(default_factory=dict)
    trainable_params: int = 0

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None

    def final(self, last: int = 10) -> dict:
        """Mean of each loss over the last `last` steps (the final losses the manifest records)."""
        rows = self.history[-last:]
        keys = [k for k in ("loss", "kd", "ce", "hidden", "agreement") if rows and k in rows[0]]
        return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


def lr_lambda(config: RecoverConfig) -> Callable[[int], float]:
    warm, total = config.warmup_steps, config.steps

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return f


def train(student: nn.Module, teacher: nn.Module, next_batch: Callable[[int], Batch], config: RecoverConfig, *,
          hidden_pairs: list[tuple[int, int]] | None = None, state_dir: Path | None = None,
          fingerprint: dict | None = None) -> TrainResult:
    """Distil `teacher` into `student` for `config.steps` steps; `next_batch(step)` gives the data."""
    torch.manual_seed(config.seed)  # LoRA's A init
    teacher.eval().requires_grad_(False)
    model = METHODS[config.method].prepare(student, config)
    if config.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = trainable(model)
    n_params = sum(p.numel() for p in params.values())
    logger.info("%s: %s trainable parameters", config.method, f"{n_params:,}")
    opt = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config))
    history: list[dict] = []
    start = 0
    if state_dir is not None and (Path(state_dir) / STATE).is_file():
        start, history = _load_state(Path(state_dir), params, opt, sched, fingerprint)
        logger.info("resuming from step %d (%s)", start, state_dir)
    elif state_dir is not None and Path(state_dir).is_dir():
        _rewrite_live(Path(state_dir), [])  # the log of a killed run that never saved a state
    device = first_param_device(student)
    _reset_peak(device)
    pairs = hidden_pairs or []
    bar = tqdm(total=config.steps, initial=start, disable=not config.progress, desc=f"recover {config.method}",
               unit="step")
    tokens, t0 = 0, time.perf_counter()
    try:
        for step in range(start, config.steps):
            row = train_step(model, teacher, next_batch(step).to(device), config, opt, pairs)
            sched.step()
            row = {"step": step + 1, **row, "lr": opt.param_groups[0]["lr"]}
            tokens += row["tokens"]
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{_running(history, 'loss'):.4f}", agree=f"{_running(history, 'agreement'):.3f}")
            if state_dir is not None:
                _append_live(Path(state_dir), row)
                if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < config.steps:
                    _save_state(Path(state_dir), step + 1, params, opt, sched, history, fingerprint)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    model.eval()
    if config.gradient_checkpointing:
        student.gradient_checkpointing_disable()
    return TrainResult(model, history, seconds, tokens, start or None, _peak(device), n_params)


def train_step(model: nn.Module, teacher: nn.Module, batch: Batch, config: RecoverConfig,
               opt: torch.optim.Optimizer, pairs: list[tuple[int, int]]) -> dict:
    """One optimizer step; returns the step's losses, teacher agreement and token count."""
    want_hidden = config.hidden_weight > 0 and bool(pairs)
    with torch.inference_mode():
        t_out = teacher(**batch.inputs, logits_to_keep=batch.keep, output_hidden_states=want_hidden)
    t_logits = t_out.logits.clone()  # out of inference mode: the loss saves it for backward
    t_hidden = tuple(h.clone() for h in t_out.hidden_states) if want_hidden else None
    out = model(**batch.inputs, logits_to_keep=batch.keep, output_hidden_states=want_hidden, use_cache=False)
    kd = kd_loss(out.logits, t_logits, batch.loss_mask, config.kd_temperature)
    loss, row = kd, {"kd": kd.item()}
    if config.ce_weight > 0:
        ce = ce_loss(out.logits, batch.targets, batch.loss_mask)
        loss = loss + config.ce_weight * ce
        row["ce"] = ce.item()
    if want_hidden:
        hid = hidden_loss(out.hidden_states, t_hidden, pairs, batch.inputs["attention_mask"])
        loss = loss + config.hidden_weight * hid
        row["hidden"] = hid.item()
    if not torch.isfinite(loss):
        raise RecoveryError(f"the loss became {loss.item()} (lower --lr, or train in float32 with --dtype float32)")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], config.max_grad_norm)
    opt.step()
    return {"loss": loss.item(), **row, "agreement": agreement(out.logits, t_logits, batch.loss_mask),
            "tokens": batch.tokens}


@torch.no_grad()
def evaluate(model: nn.Module, teacher: nn.Module, batches: list[Batch], temperature: float = 1.0) -> dict:
    """KD loss and top-1 teacher agreement over fixed batches, weighted by answer tokens (no update): the
    before/after probe the manifest records."""
    was_training = model.training
    model.eval()
    device = first_param_device(model)
    kd = agree = n = 0.0
    for batch in batches:
        batch = batch.to(device)
        t = teacher(**batch.inputs, logits_to_keep=batch.keep).logits
        s = model(**batch.inputs, logits_to_keep=batch.keep).logits
        k = batch.loss_mask.sum().item()
        kd += kd_loss(s, t, batch.loss_mask, temperature).item() * k
        agree += agreement(s, t, batch.loss_mask) * k
        n += k
    model.train(was_training)
    return {"kd": kd / n, "agreement": agree / n, "answer_tokens": int(n)}


def _running(history: list[dict], key: str, window: int = 20) -> float:
    rows = history[-window:]
    return sum(r[key] for r in rows) / len(rows)


# ---------------------------------------------------------------- resume state


def _save_state(state_dir: Path, step: int, params: dict, opt, sched, history: list[dict], fingerprint) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f"{STATE}.tmp-{os.getpid()}"
    torch.save({"fingerprint": fingerprint, "step": step, "params": {n: p.detach().cpu() for n, p in params.items()},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history}, tmp)
    os.replace(tmp, state_dir / STATE)  # a kill during the save keeps the previous state
    logger.info("resume state at step %d written to %s", step, state_dir)


def _load_state(state_dir: Path, params: dict, opt, sched, fingerprint) -> tuple[int, list[dict]]:
    state = torch.load(state_dir / STATE, map_location="cpu", weights_only=True)
    if state["fingerprint"] != fingerprint:
        diff = sorted(k for k in set(state["fingerprint"] or {}) | set(fingerprint or {})
                      if (state["fingerprint"] or {}).get(k) != (fingerprint or {}).get(k))
        raise RecoveryError(f"{state_dir} holds the resume state of another run (differs in: {', '.join(diff)}); "
                            "remove it to start over, or rerun with the same options")
    if set(state["params"]) != set(params):
        raise RecoveryError(f"{state_dir}: the saved trainable parameters do not match this model; remove it")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state["params"][n])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    history = state["history"]
    _rewrite_live(state_dir, history)  # rows a killed run logged after its last save are dropped
    return state["step"], history


def _append_live(state_dir: Path, row: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LIVE_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _rewrite_live(state_dir: Path, history: list[dict]) -> None:
    (state_dir / LIVE_LOG).write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")


# ---------------------------------------------------------------- memory


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> dict:
    """Peak allocated/reserved device memory of the training loop (GPU), or the process's peak RSS (CPU)."""
    if device.type == "cuda":
        return {"allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                "reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20}
    return {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
