"""Bootstrap plumbing shared by every metric: resample counts, percentile CIs, the result type.

Every corpus metric here is written as a function of per-sample sufficient statistics and a
*counts* matrix `(B, n)`: row b says how many times each sample appears in resample b. Row 0 is
all ones (the full set, i.e. the point estimate), so the point estimate and the bootstrap go
through the same code path and a resample is never materialised as a list of strings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from vlmslim.errors import BenchmarkError

logger = logging.getLogger(__name__)

CI_LEVEL = 0.95


@dataclass
class ScoreResult:
    """Corpus metrics, their 95% percentile-bootstrap CIs, per-sample scores and provenance notes."""

    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    per_sample: dict[str, dict[str, float]]
    notes: dict = field(default_factory=dict)
    # the corpus value of every resample, (n_bootstrap,) per metric: for plots or other interval types
    bootstrap: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        """metrics, ci (lists), per_sample, notes: what summary.json and the score cache keep (no resamples)."""
        return {"metrics": self.metrics, "ci": {k: list(v) for k, v in self.ci.items()},
                "per_sample": self.per_sample, "notes": self.notes}

    def merge(self, other: ScoreResult) -> ScoreResult:
        """Union of two results over the same samples (e.g. captions + BERTScore)."""
        per_sample = {k: dict(v) for k, v in self.per_sample.items()}
        for sid, scores in other.per_sample.items():
            per_sample.setdefault(sid, {}).update(scores)
        return ScoreResult(
            metrics={**self.metrics, **other.metrics},
            ci={**self.ci, **other.ci},
            per_sample=per_sample,
            notes={**self.notes, **other.notes},
            bootstrap={**self.bootstrap, **other.bootstrap},
        )


class PairedDifference(NamedTuple):
    """model − baseline on the common samples, with a paired-bootstrap 95% CI."""

    diff: float
    lo: float
    hi: float


def resample_counts(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(1 + n_bootstrap, n) float counts: row 0 is the full set, rows 1.. are resamples with replacement."""
    if n < 1:
        raise ValueError("resample_counts: need at least one sample")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    # bincount over row-offset indices turns (B, n) index draws into (B, n) multiplicities at once.
    flat = (idx + n * np.arange(n_bootstrap)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n_bootstrap * n).reshape(n_bootstrap, n)
    return np.vstack([np.ones((1, n)), counts]).astype(np.float64)


def resample_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """The (n_bootstrap, n) index draws behind `resample_counts` (same seed ⇒ same resamples); for tests."""
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def percentile_ci(values: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of resampled statistics (NaNs, e.g. undefined resamples, dropped)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return (float(lo), float(hi))


def summarise(values: dict[str, np.ndarray], per_sample: dict[str, dict[str, float]], notes: dict) -> ScoreResult:
    """ScoreResult from (1 + B,) arrays: point estimates from row 0, CIs and distributions from rows 1.."""
    metrics = {k: float(v[0]) for k, v in values.items()}
    ci = {k: percentile_ci(v[1:]) if v.shape[0] > 1 else (float("nan"), float("nan")) for k, v in values.items()}
    return ScoreResult(metrics=metrics, ci=ci, per_sample=per_sample, notes=notes,
                       bootstrap={k: v[1:].copy() for k, v in values.items()})


def weighted_mean(per_sample: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of a per-sample score under each row of counts: (B, n) @ (n,) / n."""
    return counts @ per_sample / counts.sum(axis=1)


def weighted_quantile(values: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """`np.percentile(np.repeat(values, counts_row), 100 q)` (linear) for every row, without repeating."""
    order = np.argsort(values, kind="stable")
    sorted_values = np.asarray(values, dtype=np.float64)[order]
    cum = np.cumsum(counts[:, order], axis=1)  # (B, n) ranks reached after each sorted value
    total = cum[:, -1]
    pos = q * (total - 1)
    lo_rank, frac = np.floor(pos), pos - np.floor(pos)
    hi_rank = np.minimum(lo_rank + 1, total - 1)
    # the value of rank r is the first sorted value whose cumulative count exceeds r
    lo_val = sorted_values[(cum <= lo_rank[:, None]).sum(axis=1)]
    hi_val = sorted_values[(cum <= hi_rank[:, None]).sum(axis=1)]
    return lo_val + frac * (hi_val - lo_val)


def paired_summary(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, PairedDifference]:
    """Per-resample differences a − b of (1 + B,) arrays computed on the same counts."""
    out = {}
    for key in a.keys() & b.keys():
        d = a[key] - b[key]
        lo, hi = percentile_ci(d[1:]) if d.shape[0] > 1 else (float("nan"), float("nan"))
        out[key] = PairedDifference(float(d[0]), lo, hi)
    return dict(sorted(out.items()))


def paired_mean_differences(
    scores: dict[str, float], baseline: dict[str, float], *, n_bootstrap: int = 1000, seed: int = 0
) -> PairedDifference:
    """Mean of a per-sample score (VQA accuracy, BERTScore) minus the baseline's, paired over common ids."""
    ids = sorted(scores.keys() & baseline.keys(), key=str)
    if not ids:
        raise ValueError("paired_mean_differences: no common sample ids")
    d = np.array([scores[k] - baseline[k] for k in ids], dtype=np.float64)
    values = weighted_mean(d, resample_counts(len(ids), n_bootstrap, seed))
    lo, hi = percentile_ci(values[1:]) if n_bootstrap else (float("nan"), float("nan"))
    return PairedDifference(float(values[0]), lo, hi)


def scored_ids(predictions: dict, references: dict, what: str = "references") -> list:
    """The ids to score, sorted; a prediction without references or an empty set is an error."""
    missing = [k for k in predictions if k not in references]
    if missing:
        raise BenchmarkError(f"{len(missing)} predictions have no {what} (e.g. {missing[:3]})")
    if not predictions:
        raise BenchmarkError("no predictions to score")
    return sorted(predictions, key=str)
