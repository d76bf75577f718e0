"""ROUGE-L as pycocoevalcap computes it (PTB tokens, beta = 1.2, max P and max R over references),
and ROUGE-1/2/L F-measures from Google's `rouge-score` package (raw text, Porter stemmer).

Both corpus scores are plain means of per-sample scores, so a resample is `counts @ scores / n`.
"""

from __future__ import annotations

import functools

import numpy as np
from rouge_score import rouge_scorer, tokenizers

BETA = 1.2
ROUGE_SCORE_KEYS = {"rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeL_f"}
ROUGE_SCORE_NOTE = "rouge-score F-measure, default tokenizer + Porter stemmer, best reference per sample, mean"


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(len(b)) big-int ops."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l_sample(hyp: str, refs: list[str]) -> float:
    """pycocoevalcap `Rouge.calc_score` (it splits on single spaces, so "" is one empty token)."""
    cand = hyp.split(" ")
    prec, rec = [], []
    for ref in refs:
        toks = ref.split(" ")
        lcs = lcs_length(toks, cand)
        prec.append(lcs / float(len(cand)))
        rec.append(lcs / float(len(toks)))
    p, r = max(prec), max(rec)
    if p != 0 and r != 0:
        return ((1 + BETA ** 2) * p * r) / float(r + BETA ** 2 * p)
    return 0.0


def rouge_l_scores(hyps: list[str], refs: list[list[str]]) -> np.ndarray:
    return np.array([rouge_l_sample(h, r) for h, r in zip(hyps, refs)], dtype=np.float64)


class _CachedTokenizer(tokenizers.Tokenizer):
    """rouge-score's default tokenizer, memoised: `score_multi` re-tokenizes the prediction per reference."""

    def __init__(self) -> None:
        self._cached = functools.lru_cache(maxsize=200_000)(tokenizers.DefaultTokenizer(use_stemmer=True).tokenize)

    def tokenize(self, text: str) -> list[str]:
        return self._cached(text)


# (hypothesis, references) -> its scores, for this process: a sweep re-scores the baseline's captions for
# every paired difference. Cleared when it reaches _MEMO_MAX entries.
_MEMO: dict[tuple[str, tuple[str, ...]], tuple[float, ...]] = {}
_MEMO_MAX = 500_000


def rouge_score_scores(hyps: list[str], refs: list[list[str]]) -> dict[str, np.ndarray]:
    """Per-sample rouge1/rouge2/rougeL_f (F-measure of the best reference, `RougeScorer.score_multi`)."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_SCORE_KEYS), tokenizer=_CachedTokenizer())
    out = {key: np.empty(len(hyps)) for key in ROUGE_SCORE_KEYS.values()}
    if len(_MEMO) + len(hyps) > _MEMO_MAX:
        _MEMO.clear()
    for i, (h, r) in enumerate(zip(hyps, refs)):
        key = (h, tuple(r))
        if key not in _MEMO:
            best = scorer.score_multi(r, h)
            _MEMO[key] = tuple(best[rtype].fmeasure for rtype in ROUGE_SCORE_KEYS)
        for value, name in zip(_MEMO[key], ROUGE_SCORE_KEYS.values()):
            out[name][i] = value
    return out
