"""BLEU-1..4 exactly as pycocoevalcap 1.2 computes it, from per-sample sufficient statistics.

pycocoevalcap's corpus BLEU (`BleuScorer.compute_score(option="closest")`) sums, over samples:
clipped n-gram matches ("correct"), hypothesis n-gram counts ("guess"), hypothesis length and the
*closest* reference length (ties → the shorter reference). Then
    bleu_k = (prod_{j<=k} (correct_j + 1e-15) / (guess_j + 1e-9)) ** (1/k)
times the brevity penalty exp(1 - reflen/testlen) when testlen < reflen (written there as
ratio = (testlen + 1e-15) / (reflen + 1e-9); exp(1 - 1/ratio)). Sums are linear, so a resample is
`counts @ stats`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

N = 4
TINY, SMALL = 1e-15, 1e-9
KEYS = tuple(f"bleu{k}" for k in range(1, N + 1))


def _ngrams(words: list[str]) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, N + 1) for i in range(len(words) - k + 1))


def sample_stats(hyp: str, refs: list[str]) -> list[float]:
    """[correct_1..4, guess_1..4, testlen, reflen_closest] for one tokenized hypothesis."""
    maxcounts: dict[tuple, int] = {}
    reflens = []
    for ref in refs:
        words = ref.split()
        reflens.append(len(words))
        for gram, c in _ngrams(words).items():
            maxcounts[gram] = max(maxcounts.get(gram, 0), c)
    words = hyp.split()
    testlen = len(words)
    correct = [0] * N
    for gram, c in _ngrams(words).items():
        correct[len(gram) - 1] += min(maxcounts.get(gram, 0), c)
    guess = [max(0, testlen - k + 1) for k in range(1, N + 1)]
    reflen = min((abs(length - testlen), length) for length in reflens)[1]
    return [*correct, *guess, testlen, reflen]


def stats_matrix(hyps: list[str], refs: list[list[str]]) -> np.ndarray:
    """(n, 10) float matrix of `sample_stats` rows."""
    return np.array([sample_stats(h, r) for h, r in zip(hyps, refs)], dtype=np.float64).reshape(-1, 2 * N + 2)


def _bleu_from_totals(correct: np.ndarray, guess: np.ndarray, testlen: np.ndarray, reflen: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised pycocoevalcap formula; inputs are (..., 4) / (...,) arrays of summed statistics."""
    out = {}
    prod = np.ones(testlen.shape)
    for k in range(N):
        prod = prod * ((correct[..., k] + TINY) / (guess[..., k] + SMALL))
        out[KEYS[k]] = prod ** (1.0 / (k + 1))
    ratio = (testlen + TINY) / (reflen + SMALL)
    with np.errstate(divide="ignore"):
        bp = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return {k: v * bp for k, v in out.items()}


def corpus(stats: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Corpus BLEU-1..4 for each row of counts (B, n) → {key: (B,)}."""
    totals = counts @ stats  # (B, 10)
    return _bleu_from_totals(totals[:, :N], totals[:, N:2 * N], totals[:, 2 * N], totals[:, 2 * N + 1])


def per_sample(stats: np.ndarray) -> dict[str, np.ndarray]:
    """pycocoevalcap's per-image BLEU (its `bleu_list`), same smoothing constants."""
    return _bleu_from_totals(stats[:, :N], stats[:, N:2 * N], stats[:, 2 * N], stats[:, 2 * N + 1])

