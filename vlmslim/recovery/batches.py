"""Training batches: image + pinned prompt + the teacher's answer, right-padded, with the answer mask.

A sequence is the processor's encoding of (image, prompt ending where the answer starts) followed by
the teacher's answer ids, so teacher and student see exactly the tokens the benchmark will feed and the
answer starts where generation would. Right padding keeps every real token at its natural position.

`loss_mask[b, t]` marks the positions whose logits predict an answer token (t = answer position - 1).
The forward only needs logits there: `keep` is the sorted union of those positions over the batch,
passed as `logits_to_keep`, so the (B, L, vocab) logits of a 600-token LLaVA prompt are never built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmslim.data import LocalDataset
from vlmslim.errors import RecoveryError
from vlmslim.families import get_family
from vlmslim.prompts import pinned_instruction

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # the model's forward inputs, (B, L) text tensors
    keep: torch.Tensor  # (K,) sorted positions whose logits the loss reads
    loss_mask: torch.Tensor  # (B, K) bool: position keep[k] of row b predicts an answer token
    targets: torch.Tensor  # (B, K) the answer token predicted there (-100 elsewhere)
    tokens: int  # real (non-pad) tokens in the batch

    def to(self, device) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.keep.to(device),
                     self.loss_mask.to(device), self.targets.to(device), self.tokens)


class Encoder:
    """Encodes samples of `dataset` with their teacher answers; encodings are kept in memory up to
    `cache_bytes` (the demo's whole set fits; a COCO subset at 336 px is re-encoded each epoch)."""

    def __init__(self, model, processor, dataset: LocalDataset, answers: list[list[int]], max_length: int,
                 cache_bytes: int = 1 << 30):
        self.family = get_family(model)
        self.processor, self.dataset, self.answers, self.max_length = processor, dataset, answers, max_length
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.cache: dict[int, dict] = {}
        self.cache_bytes, self.used = cache_bytes, 0

    def encode(self, i: int) -> dict:
        if i in self.cache:
            return self.cache[i]
        sample = self.dataset.samples[i]
        prompt = self.family.build_prompt(self.processor, pinned_instruction(sample))
        enc = dict(self.processor(images=[self.dataset.open_image(sample)], text=[prompt], return_tensors="pt"))
        n_prompt = enc["input_ids"].shape[1]
        if n_prompt >= self.max_length:
            raise RecoveryError(f"the prompt of sample {sample.id} takes {n_prompt} tokens (image tokens included); "
                                f"--max-length {self.max_length} leaves no room for the answer: raise it")
        answer = torch.tensor(self.answers[i][: self.max_length - n_prompt], dtype=torch.long)[None]
        enc["input_ids"] = torch.cat([enc["input_ids"], answer], dim=1)
        enc["attention_mask"] = torch.ones_like(enc["input_ids"])
        if "token_type_ids" in enc:  # PaliGemma: 0 for image + prefix, 1 for the suffix (the answer)
            enc["token_type_ids"] = torch.cat([enc["token_type_ids"], torch.ones_like(answer)], dim=1)
        enc["n_prompt"] = n_prompt
        size = sum(v.numel() * v.element_size() for v in enc.values() if isinstance(v, torch.Tensor))
        if self.used + size <= self.cache_bytes:
            self.cache[i] = enc
            self.used += size
        return enc

    def batch(self, indices: list[int]) -> Batch:
        return collate([self.encode(i) for i in indices], self.tokenizer.pad_token_id)


def collate(encs: list[dict], pad_id: int) -> Batch:
    """Right-pad the text tensors, concatenate the image tensors (batch dim 0), build mask and targets."""
    width = max(e["input_ids"].shape[1] for e in encs)
    b = len(encs)
    inputs = {"input_ids": torch.full((b, width), pad_id, dtype=torch.long),
              "attention_mask": torch.zeros((b, width), dtype=torch.long)}
    if "token_type_ids" in encs[0]:
        inputs["token_type_ids"] = torch.ones((b, width), dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.bool)
    targets = torch.full((b, width), -100, dtype=torch.long)
    for row, e in enumerate(encs):
        n, p = e["input_ids"].shape[1], e["n_prompt"]
        for k in TEXT_KEYS:
            if k in e:
                inputs[k][row, :n] = e[k][0]
        mask[row, p - 1: n - 1] = True  # logits at t predict token t + 1: the answer's tokens p .. n-1
        targets[row, p - 1: n - 1] = e["input_ids"][0, p:n]
    for k in encs[0]:
        if k not in TEXT_KEYS and k != "n_prompt":
            inputs[k] = _cat([e[k] for e in encs], k)
    keep = mask.any(dim=0).nonzero().flatten()
    return Batch(inputs, keep, mask[:, keep], targets[:, keep], int(inputs["attention_mask"].sum()))


def _cat(tensors: list[torch.Tensor], key: str) -> torch.Tensor:
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) > 1:
        raise RecoveryError(f"the processor gives {key} of different shapes {sorted(shapes)} within one batch; "
                            "use --batch-size 1")
    return torch.cat(tensors, dim=0)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation drawn from (seed, epoch) alone, so the batch of any
    step is known without replaying the earlier ones (what makes a resumed run see the same data)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def step_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The sample indices of training step `step` (0-based): consecutive slices of the epoch orders."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        order = epoch_order(n, seed, epoch)
        out += order[offset: offset + batch_size - len(out)]
    return out
