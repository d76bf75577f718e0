"""Open-ended (long-answer) VQA: ROUGE-L, METEOR and BERTScore with bootstrap CIs.

`rouge_l` is pycocoevalcap's ROUGE-L (PTB tokens, beta 1.2, as for captions); `rougeL_f` is the
`rouge-score` package's ROUGE-L F-measure (stemmed raw text), the one summarisation papers quote.
"""

from __future__ import annotations

import logging

from vlmslim.benchmarks.metrics.bertscore import BertScoreConfig, with_bertscore
from vlmslim.benchmarks.metrics.bootstrap import ScoreResult
from vlmslim.benchmarks.metrics.captions import score_captions

logger = logging.getLogger(__name__)

OPEN_VQA_TEXT_METRICS = ("rouge_l", "rougeL_f", "meteor")
_DEFAULT_BERTSCORE = BertScoreConfig()


def score_open_vqa(
    predictions: dict[str, str],
    references: dict[str, list[str] | str],
    *,
    bertscore: BertScoreConfig | None = _DEFAULT_BERTSCORE,
    n_bootstrap: int = 1000,
    seed: int = 0,
    allow_fallback: bool = False,
) -> ScoreResult:
    """ROUGE-L (both flavours), METEOR and BERTScore P/R/F1; `bertscore=None` skips BERTScore (noted)."""
    refs = {k: [v] if isinstance(v, str) else list(v) for k, v in references.items()}
    result = score_captions(predictions, refs, n_bootstrap=n_bootstrap, seed=seed,
                            metrics=OPEN_VQA_TEXT_METRICS, allow_fallback=allow_fallback)
    return with_bertscore(result, predictions, refs, bertscore, n_bootstrap=n_bootstrap, seed=seed)
