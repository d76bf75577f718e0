"""Quality metrics with bootstrap confidence intervals: captions (COCO), TextVQA accuracy, open VQA.

Every score function returns a `ScoreResult` (metrics, 95% CIs, per-sample scores, notes); samples
are resampled with replacement and corpus metrics are recomputed per resample (CIDEr-D IDF included).
"""

from vlmslim.benchmarks.metrics.bertscore import BertScoreConfig, paired_bertscore, score_bertscore, with_bertscore
from vlmslim.benchmarks.metrics.bootstrap import PairedDifference, ScoreResult, paired_mean_differences
from vlmslim.benchmarks.metrics.captions import CAPTION_METRICS, paired_differences, score_captions
from vlmslim.benchmarks.metrics.open_vqa import score_open_vqa
from vlmslim.benchmarks.metrics.vqa import normalize_vqa_answer, score_vqa, vqa_accuracy

__all__ = [
    "CAPTION_METRICS",
    "BertScoreConfig",
    "PairedDifference",
    "ScoreResult",
    "normalize_vqa_answer",
    "paired_bertscore",
    "paired_differences",
    "paired_mean_differences",
    "score_bertscore",
    "score_captions",
    "score_open_vqa",
    "score_vqa",
    "vqa_accuracy",
    "with_bertscore",
]
