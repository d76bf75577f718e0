"""Distillation losses on the answer tokens, and which decoder layers of student and teacher align.

- KD: `T² · KL(softmax(t/T) || softmax(s/T))` per answer token, summed over the vocabulary and averaged
  over tokens (Hinton et al.; the T² keeps gradient scale independent of T).
- CE: cross-entropy of the student on the teacher's own (greedy) tokens.
- hidden: MSE between a student layer's output and its teacher counterpart on the real (non-pad)
  tokens, divided by the teacher's mean square so the weight means the same at any width or depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmslim.errors import RecoveryError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """(B, K, V) logits, (B, K) bool mask -> scalar KL(teacher || student) at temperature T, times T²."""
    s = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)  # (N, V)
    t = F.log_softmax(teacher_logits[mask].float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (N,)
    return kl.mean() * temperature**2


def ce_loss(student_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(student_logits[mask].float(), targets[mask])


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of answer tokens where the student's argmax is the teacher's."""
    with torch.no_grad():
        return (student_logits[mask].argmax(-1) == teacher_logits[mask].argmax(-1)).float().mean().item()


def hidden_loss(student_hidden: tuple, teacher_hidden: tuple, pairs: list[tuple[int, int]],
                attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean normalised MSE over aligned (student layer, teacher layer) pairs.

    `*_hidden` are the models' `hidden_states` (embeddings first: layer i's output is index i + 1),
    each (B, L, H); only real tokens count."""
    real = attention_mask.bool()
    losses = []
    for si, ti in pairs:
        s, t = student_hidden[si + 1][real].float(), teacher_hidden[ti + 1][real].float()  # (N, H)
        losses.append(((s - t) ** 2).mean() / (t.pow(2).mean() + 1e-6))
    return torch.stack(losses).mean()


def aligned_layers(student_manifest: dict | None, teacher_manifest: dict | None, n_student: int,
                   n_teacher: int) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs whose outputs correspond: the student's layers are the
    teacher's minus the layers the student's later prune steps dropped (read from its manifest).

    The last layers are paired only with each other: some transformers versions return the last output
    after the decoder's final norm."""
    s_steps = (student_manifest or {}).get("steps") or []
    t_steps = (teacher_manifest or {}).get("steps") or []
    if n_student == n_teacher and not any(s.get("dropped_layers") for s in s_steps[len(t_steps):]):
        kept = list(range(n_teacher))
    elif _comparable(s_steps[:len(t_steps)]) == _comparable(t_steps):
        kept = list(range(n_teacher))
        for s in s_steps[len(t_steps):]:
            dropped = set(s.get("dropped_layers") or [])
            kept = [k for i, k in enumerate(kept) if i not in dropped]  # indices are of the model at that step
    else:
        raise RecoveryError("--hidden-weight: cannot tell which layers align: the student is not the teacher "
                            "followed by prune steps (compare their manifests), and their depths differ "
                            f"({n_student} vs {n_teacher})")
    if len(kept) != n_student:
        raise RecoveryError(f"--hidden-weight: the manifests leave {len(kept)} layers, the student has {n_student}")
    last_s, last_t = n_student - 1, n_teacher - 1
    return [(i, k) for i, k in enumerate(kept) if (i == last_s) == (k == last_t)]


def _comparable(steps: list[dict]) -> list:
    return [(s.get("kind"), s.get("method"), s.get("params")) for s in steps]
