"""Caption metrics (COCO: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D; rouge-score; caption length) with
bootstrap CIs and paired differences.

Pipeline: tokenize every caption once with PTB (one JVM) while the METEOR JVM starts; then per-sample
sufficient statistics once (METEOR in the jar's thread while Python counts n-grams); then every
corpus metric for the full set and all resamples from `counts @ statistics` in numpy.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from importlib.metadata import version

import numpy as np

from vlmslim.benchmarks.metrics import bleu, cider, meteor, rouge
from vlmslim.benchmarks.metrics.bootstrap import (
    PairedDifference,
    ScoreResult,
    paired_summary,
    resample_counts,
    summarise,
    weighted_mean,
    weighted_quantile,
)
from vlmslim.benchmarks.metrics.tokenize import (
    TOKENIZER_FALLBACK,
    TOKENIZER_PTB,
    java_available,
    require_java,
    tokenize_all,
)
from vlmslim.errors import BenchmarkError

logger = logging.getLogger(__name__)

FAMILIES: dict[str, tuple[str, ...]] = {
    "bleu": bleu.KEYS,
    "meteor": ("meteor",),
    "rouge_l": ("rouge_l",),
    "cider": ("cider",),
    "rouge_score": tuple(rouge.ROUGE_SCORE_KEYS.values()),
    "length": ("caption_len_mean", "caption_len_p90"),
}
CAPTION_METRICS: tuple[str, ...] = tuple(k for keys in FAMILIES.values() for k in keys)
_NEEDS_TOKENS = {"bleu", "meteor", "rouge_l", "cider"}
LENGTH_QUANTILE = 0.9


@dataclass
class CaptionStats:
    """Per-sample sufficient statistics of one prediction set (None: family not requested/available)."""

    bleu: np.ndarray | None = None  # (n, 10)
    meteor: np.ndarray | None = None  # (n, 23)
    rouge_l: np.ndarray | None = None  # (n,)
    cider: cider.CiderStats | None = None
    rouge_score: dict[str, np.ndarray] | None = None
    lengths: np.ndarray | None = None  # (n,) words per raw prediction


@dataclass
class PreparedStats:
    stats: list[CaptionStats]
    notes: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def _families(metrics: tuple[str, ...] | None) -> dict[str, tuple[str, ...]]:
    """Requested metric keys grouped by the family that computes them."""
    if metrics is None:
        return dict(FAMILIES)
    unknown = sorted(set(metrics) - set(CAPTION_METRICS))
    if unknown:
        raise ValueError(f"metrics: unknown {unknown}; choose from {list(CAPTION_METRICS)}")
    wanted = {}
    for fam, keys in FAMILIES.items():
        chosen = tuple(k for k in keys if k in metrics)
        if chosen:
            wanted[fam] = chosen
    return wanted


def _common_ids(prediction_sets: list[dict[str, str]], references: dict[str, list[str]]) -> list[str]:
    """Sorted ids scored: all of each prediction set must have references; paired sets use the intersection."""
    for preds in prediction_sets:
        missing = [k for k in preds if k not in references]
        if missing:
            raise BenchmarkError(f"{len(missing)} predictions have no references (e.g. {missing[:3]})")
    ids = set(prediction_sets[0])
    for preds in prediction_sets[1:]:
        ids &= set(preds)
    if not ids:
        raise BenchmarkError("no predictions to score (empty input or no common sample ids)")
    for k in ids:
        refs = references[k]
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise BenchmarkError(f"sample {k!r}: references must be a non-empty list of strings")
        for preds in prediction_sets:
            if not isinstance(preds[k], str):
                raise BenchmarkError(f"sample {k!r}: prediction must be a string, got {type(preds[k]).__name__}")
    return sorted(ids, key=str)


def prepare_statistics(pred_lists: list[list[str]], refs: list[list[str]], families: dict, allow_fallback: bool) -> PreparedStats:
    """Tokenize once, then compute the sufficient statistics of every requested family for every prediction set."""
    prep = PreparedStats(stats=[CaptionStats() for _ in pred_lists])
    need_tokens = bool(_NEEDS_TOKENS & families.keys())
    use_java = java_available()
    if need_tokens and not use_java:
        if not allow_fallback:
            require_java()  # raises JavaMissingError with the hint
        logger.warning("Java missing: captions tokenized by the simple Python fallback, METEOR skipped (labelled in notes)")
        if "meteor" in families:
            prep.notes["meteor"] = "absent: Java missing (fallback tokenizer in use)"
    if need_tokens:
        prep.notes["tokenizer"] = TOKENIZER_PTB if use_java else TOKENIZER_FALLBACK
    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        tok_hyps: list[list[str]] = []
        if need_tokens:
            n = len(refs)
            flat = [h for hyps in pred_lists for h in hyps] + [r for rs in refs for r in rs]
            tokens = tokenize_all(flat, use_java=use_java)
            tok_hyps = [tokens[j * n:(j + 1) * n] for j in range(len(pred_lists))]
            it = iter(tokens[len(pred_lists) * n:])
            tok_refs = [[next(it) for _ in rs] for rs in refs]
        prep.timings["tokenize"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pending, lines, missing = None, [], []
        if "meteor" in families and use_java:
            lines = [meteor.score_line(h, r) for h, r in zip([h for hyps in tok_hyps for h in hyps],
                                                              tok_refs * len(pred_lists))]
            missing = meteor.unseen(lines)
            if missing:  # the JVM starts only for captions this process has not scored before
                pending = stack.enter_context(meteor.MeteorJar()).submit_lines(missing)
        for stats, hyps, raw in zip(prep.stats, tok_hyps or [None] * len(pred_lists), pred_lists):
            if "bleu" in families:
                stats.bleu = bleu.stats_matrix(hyps, tok_refs)
            if "rouge_l" in families:
                stats.rouge_l = rouge.rouge_l_scores(hyps, tok_refs)
            if "cider" in families:
                stats.cider = cider.build_stats(hyps, tok_refs)
            if "rouge_score" in families:
                stats.rouge_score = rouge.rouge_score_scores(raw, refs)
            if "length" in families:
                stats.lengths = np.array([len(p.split()) for p in raw], dtype=np.float64)
        if lines:
            if pending is not None:
                meteor.remember(missing, pending.result())
            all_meteor = meteor.recall(lines)
            for j, stats in enumerate(prep.stats):
                stats.meteor = all_meteor[j * len(refs):(j + 1) * len(refs)]
        prep.timings["stats"] = time.perf_counter() - t0
    return prep


def corpus_values(stats: CaptionStats, counts: np.ndarray, families: dict) -> dict[str, np.ndarray]:
    """Every requested corpus metric for each row of counts (row 0 = full set) → {key: (B,)}."""
    out: dict[str, np.ndarray] = {}
    if stats.bleu is not None:
        out.update(bleu.corpus(stats.bleu, counts))
    if stats.meteor is not None:
        out.update(meteor.corpus(stats.meteor, counts))
    if stats.rouge_l is not None:
        out["rouge_l"] = weighted_mean(stats.rouge_l, counts)
    if stats.cider is not None:
        out.update(cider.corpus(stats.cider, counts))
    if stats.rouge_score is not None:
        out.update({k: weighted_mean(v, counts) for k, v in stats.rouge_score.items()})
    if stats.lengths is not None:
        out["caption_len_mean"] = weighted_mean(stats.lengths, counts)
        out["caption_len_p90"] = weighted_quantile(stats.lengths, counts, LENGTH_QUANTILE)
    wanted = {k for keys in families.values() for k in keys}
    return {k: v for k, v in out.items() if k in wanted}


def per_sample_values(stats: CaptionStats, families: dict) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if stats.bleu is not None:
        out.update(bleu.per_sample(stats.bleu))
    if stats.meteor is not None:
        out.update(meteor.per_sample(stats.meteor))
    if stats.rouge_l is not None:
        out["rouge_l"] = stats.rouge_l
    if stats.cider is not None:
        out.update(cider.per_sample(stats.cider))
    if stats.rouge_score is not None:
        out.update(stats.rouge_score)
    if stats.lengths is not None:
        out["caption_len"] = stats.lengths
    wanted = {k for keys in families.values() for k in keys} | {"caption_len"}
    return {k: v for k, v in out.items() if k in wanted}


def _notes(prep: PreparedStats, families: dict, n: int, n_bootstrap: int, seed: int) -> dict:
    notes = {
        "n_samples": n,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "ci": "95% percentile bootstrap over samples; corpus metrics (CIDEr-D IDF included) recomputed per resample",
        "pycocoevalcap": version("pycocoevalcap"),
    }
    if "bleu" in families:
        notes["bleu"] = "pycocoevalcap BLEU-1..4 (corpus, closest reference length)"
    if "cider" in families:
        notes["cider"] = f"CIDEr-D (pycocoevalcap {version('pycocoevalcap')}, sigma=6, IDF from scored set)"
    if "meteor" in families:
        notes["meteor"] = meteor.NOTE
    if "rouge_l" in families:
        notes["rouge_l"] = "pycocoevalcap ROUGE-L (beta 1.2, PTB tokens), mean over samples"
    if "rouge_score" in families:
        notes["rouge_score"] = f"{rouge.ROUGE_SCORE_NOTE} (rouge-score {version('rouge-score')})"
    if "length" in families:
        notes["caption_len"] = "words per prediction (whitespace split of the raw text); p90 linear interpolation"
    notes.update(prep.notes)  # fallback labels win
    notes["timings_s"] = {k: round(v, 3) for k, v in prep.timings.items()}
    return notes


def score_captions(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    metrics: tuple[str, ...] | None = None,
    allow_fallback: bool = False,
) -> ScoreResult:
    """COCO caption metrics + rouge-score + caption length, with 95% bootstrap CIs and per-sample scores.

    Raises JavaMissingError without Java unless `allow_fallback` (then: simple tokenizer, no METEOR, labelled).
    """
    families = _families(metrics)
    ids = _common_ids([predictions], references)
    refs = [list(references[k]) for k in ids]
    prep = prepare_statistics([[predictions[k] for k in ids]], refs, families, allow_fallback)
    t0 = time.perf_counter()
    counts = resample_counts(len(ids), n_bootstrap, seed)
    values = corpus_values(prep.stats[0], counts, families)
    prep.timings["bootstrap"] = time.perf_counter() - t0
    samples = per_sample_values(prep.stats[0], families)
    per_sample = {sid: {k: float(v[i]) for k, v in samples.items()} for i, sid in enumerate(ids)}
    return summarise(values, per_sample, _notes(prep, families, len(ids), n_bootstrap, seed))


def paired_differences(
    predictions: dict[str, str],
    baseline: dict[str, str],
    references: dict[str, list[str]],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    metrics: tuple[str, ...] | None = None,
    allow_fallback: bool = False,
) -> dict[str, PairedDifference]:
    """Corpus metric of `predictions` minus that of `baseline` on their common ids, with a paired 95% CI.

    Both systems are scored on the *same* resampled sample multisets (CIDEr-D IDF recomputed per resample).
    """
    families = _families(metrics)
    ids = _common_ids([predictions, baseline], references)
    dropped = len(set(predictions) | set(baseline)) - len(ids)
    if dropped:
        logger.warning("paired differences over %d common samples (%d ids present in only one system)", len(ids), dropped)
    refs = [list(references[k]) for k in ids]
    prep = prepare_statistics([[predictions[k] for k in ids], [baseline[k] for k in ids]], refs, families, allow_fallback)
    counts = resample_counts(len(ids), n_bootstrap, seed)
    return paired_summary(corpus_values(prep.stats[0], counts, families), corpus_values(prep.stats[1], counts, families))
