"""BERTScore through the `bert_score` package, with a settings hash; absent (never 0) when the model won't load.

The corpus BERTScore is a mean of per-sample scores, so its CI is a plain per-sample bootstrap.
With several references per sample, bert_score takes the maximum P, R and F over references
(each independently).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import bert_score
from bert_score.utils import model2layers

from vlmslim.benchmarks.metrics.bootstrap import ScoreResult, resample_counts, scored_ids, summarise, weighted_mean

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
    if config.idf:
        scorer.compute_idf([r for rs in refs for r in rs])  # IDF from the scored references
    p, r, f = scorer.score([predictions[k] for k in ids], refs)
    per = {key: t.double().cpu().numpy() for key, t in zip(KEYS, (p, r, f))}
    counts = resample_counts(len(ids), n_bootstrap, seed)
    notes["bertscore"] = (f"BERTScore {config.model} layer {scorer.num_layers}, idf={config.idf}, "
                          f"rescaled={config.rescale_with_baseline} (bert_score {bert_score.__version__})")
    notes["bertscore_hash"] = scorer.hash
    per_sample = {k: {key: float(v[i]) for key, v in per.items()} for i, k in enumerate(ids)}
    return summarise({key: weighted_mean(v, counts) for key, v in per.items()}, per_sample, notes)

