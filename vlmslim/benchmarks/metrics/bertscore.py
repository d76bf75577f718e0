"""BERTScore through the `bert_score` package, with a settings hash; absent (never 0) when the model won't load.

The corpus BERTScore is a mean of per-sample scores, so its CI is a plain per-sample bootstrap.
With several references per sample, bert_score takes the maximum P, R and F over references
(each independently).

Empty texts: bert_score encodes an empty (or whitespace) string as [CLS][SEP] and sets its raw P and R
to 0 (F = 0), then rescales like any score. Under transformers 5 that path crashes (it calls a
removed tokenizer method), so empty candidates never reach bert_score here: they get the same raw
0 directly (rescaled with the same baseline), empty references are left out of a sample's
reference set, and a sample with no non-empty reference scores 0 too (bert_score's value for an
empty reference). Counts are in `notes["bertscore_empty"]`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import bert_score
import numpy as np
from bert_score.utils import model2layers

from vlmslim.benchmarks.metrics.bootstrap import (
    PairedDifference,
    ScoreResult,
    paired_mean_differences,
    resample_counts,
    scored_ids,
    summarise,
    weighted_mean,
)

logger = logging.getLogger(__name__)

KEYS = ("bertscore_precision", "bertscore_recall", "bertscore_f1")


@dataclass(frozen=True)
class BertScoreConfig:
    """BERTScore settings. `model`: hub id or local HF dir; a local dir needs `num_layers`."""

    model: str = "roberta-large"
    num_layers: int | None = 17
    rescale_with_baseline: bool = True
    idf: bool = False
    lang: str = "en"
    batch_size: int = 32
    device: str | None = None  # None: cuda when available, else cpu (bert_score's rule)
    use_fast_tokenizer: bool = False  # bert_score's default; part of its hash

    def __post_init__(self) -> None:
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"BertScoreConfig.num_layers must be >= 1, got {self.num_layers}")
        if self.num_layers is None and self.model not in model2layers:
            raise ValueError(f"BertScoreConfig.num_layers: required for {self.model!r} (bert_score has no default layer for it)")
        if self.batch_size < 1:
            raise ValueError(f"BertScoreConfig.batch_size must be >= 1, got {self.batch_size}")

    @property
    def is_local_dir(self) -> bool:
        return Path(self.model).expanduser().is_dir()


def baseline_available(model: str, lang: str) -> bool:
    """bert_score ships rescale baselines only for known hub models, keyed by their hub name."""
    return (Path(bert_score.__file__).parent / "rescale_baseline" / lang / f"{model}.tsv").is_file()


def resolve(config: BertScoreConfig) -> tuple[BertScoreConfig, list[str]]:
    """Effective settings (rescaling off where no baseline exists) and the reasons for any change."""
    changes = []
    if config.rescale_with_baseline and not baseline_available(config.model, config.lang):
        kind = "a local model dir" if config.is_local_dir else f"{config.model!r} ({config.lang})"
        changes.append(f"rescale_with_baseline off: bert_score has no baseline for {kind}")
        config = replace(config, rescale_with_baseline=False)
    return config, changes


@functools.lru_cache(maxsize=2)
def _load_scorer(config: BertScoreConfig) -> bert_score.BERTScorer:
    return bert_score.BERTScorer(
        model_type=config.model, num_layers=config.num_layers, batch_size=config.batch_size, idf=config.idf,
        device=config.device, lang=config.lang, rescale_with_baseline=config.rescale_with_baseline,
        use_fast_tokenizer=config.use_fast_tokenizer,
    )


def score_pairs(scorer, candidates: list[str], refs: list[list[str]], *, rescaled: bool) -> np.ndarray:
    """(n, 3) P, R, F per candidate (max over its references); empty texts are scored without bert_score."""
    refs = [[r for r in rs if r.strip()] for rs in refs]
    # bert_score's raw score of an empty candidate or reference is 0; rescaled: (0 - b) / (1 - b).
    empty = np.zeros(3)
    if rescaled:
        b = scorer.baseline_vals.double().cpu().numpy()  # (3,) P, R, F baselines
        empty = (0.0 - b) / (1.0 - b)
    out = np.tile(empty, (len(candidates), 1))
    keep = [i for i, (c, rs) in enumerate(zip(candidates, refs)) if c.strip() and rs]
    if keep:
        p, r, f = scorer.score([candidates[i] for i in keep], [refs[i] for i in keep])
        out[keep] = np.stack([t.double().cpu().numpy() for t in (p, r, f)], axis=1)
    return out


def _empty_counts(candidates: list[str], refs: list[list[str]]) -> dict:
    return {"predictions": sum(not c.strip() for c in candidates),
            "references": sum(not r.strip() for rs in refs for r in rs),
            "all_references_empty": sum(not any(r.strip() for r in rs) for rs in refs)}


def score_bertscore(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    config: BertScoreConfig | None = None,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> ScoreResult:
    """BERTScore P/R/F1 means with bootstrap CIs; empty metrics plus a note when the model cannot be loaded."""
    config, changes = resolve(config or BertScoreConfig())
    for change in changes:
        logger.warning("BERTScore: %s", change)
    ids = scored_ids(predictions, references, "references")
    notes: dict = {"bertscore_settings": asdict(config), "bertscore_changes": changes}
    try:
        scorer = _load_scorer(config)
    except OSError as e:  # transformers' "not found locally / cannot reach the hub"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        logger.warning("BERTScore absent: cannot load %r offline (%s)", config.model, first_line)
        notes["bertscore"] = f"absent: model {config.model!r} could not be loaded ({first_line})"
        return ScoreResult(metrics={}, ci={}, per_sample={}, notes=notes)
    refs = [[references[k]] if isinstance(references[k], str) else list(references[k]) for k in ids]
    candidates = [predictions[k] for k in ids]
    if config.idf:
        scorer.compute_idf([r for rs in refs for r in rs if r.strip()])  # IDF from the scored references
    scores = score_pairs(scorer, candidates, refs, rescaled=config.rescale_with_baseline)
    per = {key: scores[:, j] for j, key in enumerate(KEYS)}
    counts = resample_counts(len(ids), n_bootstrap, seed)
    notes["bertscore"] = (f"BERTScore {config.model} layer {scorer.num_layers}, idf={config.idf}, "
                          f"rescaled={config.rescale_with_baseline} (bert_score {bert_score.__version__})")
    notes["bertscore_hash"] = scorer.hash
    notes["bertscore_empty"] = _empty_counts(candidates, refs)
    if any(notes["bertscore_empty"].values()):
        logger.info("BERTScore: empty texts scored as bert_score scores them (raw 0): %s", notes["bertscore_empty"])
    per_sample = {k: {key: float(v[i]) for key, v in per.items()} for i, k in enumerate(ids)}
    return summarise({key: weighted_mean(v, counts) for key, v in per.items()}, per_sample, notes)


def with_bertscore(result: ScoreResult, predictions: dict[str, str], references: dict[str, list[str]],
                   config: BertScoreConfig | None, *, n_bootstrap: int, seed: int) -> ScoreResult:
    """`result` (text metrics of the same samples) plus BERTScore; `config=None` notes it as disabled."""
    if config is None:
        result.notes["bertscore"] = "disabled"
        return result
    return result.merge(score_bertscore(predictions, references, config, n_bootstrap=n_bootstrap, seed=seed))


def paired_bertscore(predictions: dict[str, str], baseline: dict[str, str], references: dict[str, list[str]],
                     config: BertScoreConfig, *, n_bootstrap: int, seed: int) -> dict[str, PairedDifference]:
    """BERTScore P/R/F1 of `predictions` minus `baseline` (paired bootstrap of per-sample means); {} if absent."""
    ours = score_bertscore(predictions, references, config, n_bootstrap=0, seed=seed).per_sample
    if not ours:  # the model could not be loaded (already logged)
        return {}
    theirs = score_bertscore(baseline, references, config, n_bootstrap=0, seed=seed).per_sample
    return {key: paired_mean_differences({i: v[key] for i, v in ours.items()}, {i: v[key] for i, v in theirs.items()},
                                         n_bootstrap=n_bootstrap, seed=seed) for key in KEYS}
