"""What a recovered checkpoint carries beside its weights: `loss.jsonl`, `loss.png`, a model-card section."""

from __future__ import annotations

import json
from pathlib import Path

LOSS_LOG = "loss.jsonl"
LOSS_PLOT = "loss.png"


def write_loss_log(directory: Path, history: list[dict]) -> Path:
    path = Path(directory) / LOSS_LOG
    path.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
    return path


def plot_losses(directory: Path, history: list[dict], title: str) -> Path:
    """Loss terms (log scale, raw and a 20-step running mean) and teacher agreement against the step."""
    # Figure + Agg canvas, as vlmslim.figures does: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in history]
    fig = Figure(figsize=(6.4, 5.6))
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    for key, color in (("loss", "black"), ("kd", "tab:blue"), ("ce", "tab:orange"), ("hidden", "tab:green")):
        if key not in history[0] or (key == "kd" and "ce" not in history[0] and "hidden" not in history[0]):
            continue  # with KD alone, loss == kd: one line
        values = [r[key] for r in history]
        ax.plot(steps, values, color=color, alpha=0.25, lw=0.8)
        ax.plot(steps, _running_mean(values), color=color, lw=1.6, label=key if key != "loss" else "total")
    ax.plot([], [], color="gray", alpha=0.4, lw=0.8, label="per step (bold: 20-step mean)")
    ax.set_yscale("log")
    ax.set_ylabel("loss (per answer token)")
    ax.legend(frameon=False)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    agree = [r["agreement"] for r in history]
    ax2.plot(steps, agree, color="tab:red", alpha=0.25, lw=0.8)
    ax2.plot(steps, _running_mean(agree), color="tab:red", lw=1.6)
    ax2.set_ylabel("top-1 agreement\nwith the teacher")
    ax2.set_xlabel("step")
    ax2.set_ylim(max(0.0, min(agree) - 0.02), 1.005)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(directory) / LOSS_PLOT
    fig.savefig(path, dpi=120)
    return path


def _running_mean(values: list[float], window: int = 20) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def recovery_card(manifest: dict) -> str:
    """The model-card section: teacher, data, method, hyper-parameters, losses, throughput."""
    s = next(s for s in reversed(manifest["steps"]) if s.get("kind") == "recover")
    p, d = s["params"], s["trained_on"]
    f = ", ".join(f"{k} {v:.4g}" for k, v in s["final_losses"].items())
    probe = s["probe"]
    b, a = probe["before"], probe["after"]
    return "\n".join([
        "", "## Recovery", "",
        f"Distilled from teacher `{s['teacher']['source']}` (model files sha256 {s['teacher']['model_sha256'][:12]}…) "
        f"with `{s['method']}` for {p['steps']} steps of {p['batch_size']} (lr {p['lr']:g}, T {p['kd_temperature']:g}"
        + (f", LoRA rank {p['lora_rank']}" if s["method"] == "lora-kd" else "") + ").",
        f"Recovery data: {d['n_samples']} samples of `{d['dir']}` (content sha256 {d['content_sha256'][:12]}…); "
        "benchmarks refuse data that shares an image with it.",
        f"On its first {probe['n_samples']} samples, KD loss {b['kd']:.4g} -> {a['kd']:.4g} and top-1 agreement "
        f"with the teacher {b['agreement']:.3f} -> {a['agreement']:.3f}; last training losses {f} "
        f"(`{LOSS_LOG}`, `{LOSS_PLOT}`).",
        f"{s['seconds']:.0f} s of training at {s['tokens_per_s']:.0f} tokens/s on {s['device']}.", ""])
