"""Attention-head surgery: remove query heads and KV heads, keeping the GQA grouping consistent.

Query head j reads KV head j // (H / H_kv). Selection (`select.select_heads`) keeps whole groups or the
same number of query heads in every group, so after slicing the kept query heads, in order, still map
onto the kept KV heads in order, and only `num_key_value_groups` changes.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmslim.families import Family
from vlmslim.pruning.slicing import slice_linear


def head_dim(attn: nn.Module, text_config) -> int:
    hd = getattr(attn, "head_dim", None) or getattr(text_config, "head_dim", None)
    return int(hd or text_config.hidden_size // text_config.num_attention_heads)


def head_counts(family: Family, attn: nn.Module, hd: int) -> tuple[int, int]:
    """(query heads, KV heads) of one attention block, read from its weights (not the config, which
    may keep the unpruned counts when the pruned ones are not expressible; see surgery.sync_config)."""
    q = attn.get_submodule(family.q_proj).out_features // hd
    kv = attn.get_submodule(family.k_proj).out_features // hd
    return q, kv


def _rows(heads: torch.Tensor, hd: int) -> torch.Tensor:
    # head h owns rows [h * hd, (h + 1) * hd) of q/k/v and the same columns of o
    return (heads[:, None] * hd + torch.arange(hd)).flatten()


def prune_heads(family: Family, attn: nn.Module, keep_q: torch.Tensor, keep_kv: torch.Tensor, hd: int) -> None:
    """Keep query heads `keep_q` and KV heads `keep_kv` (sorted int64) of one attention block."""
    q_rows, kv_rows = _rows(keep_q, hd), _rows(keep_kv, hd)
    slice_linear(attn.get_submodule(family.q_proj), 0, q_rows)  # (H*hd, hidden) -> (h*hd, hidden)
    slice_linear(attn.get_submodule(family.k_proj), 0, kv_rows)  # (H_kv*hd, hidden) -> (h_kv*hd, hidden)
    slice_linear(attn.get_submodule(family.v_proj), 0, kv_rows)
    slice_linear(attn.get_submodule(family.o_proj), 1, q_rows)  # (hidden, H*hd) -> (hidden, h*hd)
    set_head_attributes(attn, keep_q.numel(), keep_kv.numel())


def set_head_attributes(attn: nn.Module, n_q: int, n_kv: int) -> None:
    """Per-module counts that the attention forward reads (Llama: groups only; Qwen2.5-VL, OPT: heads too)."""
    for name, value in (("num_key_value_groups", n_q // n_kv), ("num_heads", n_q),
                        ("num_attention_heads", n_q), ("num_key_value_heads", n_kv)):
        if hasattr(attn, name):
            setattr(attn, name, value)
