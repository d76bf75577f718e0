"""Benchmark tasks: what to ask the model, how long it may answer, and how its answers are scored.

Each task pins the evaluation protocol of DESIGN.md (prompt wording moves LLaVA's CIDEr from ~10 to
~120, OCR tokens move TextVQA by ~12 points), so a results dir records exactly which regime it ran.
`--prompt` / `--max-new-tokens` override the pinned values and the override is recorded.

This is the only module that calls `vlmslim.benchmarks.metrics`: scoring functions and paired
differences are reached through `Task.score` / `paired_differences` below.
"""

from __future__ import annotations

import json
from pathlib import Path

from dataclasses import dataclass
from typing import Callable

from vlmslim.errors import BenchmarkError
from vlmslim.prompts import (CAPTION_PROMPT, OPEN_VQA_PROMPT, VQA_PROMPT, caption_instruction,
                             open_vqa_instruction, vqa_instruction)

CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "rouge1", "rouge2",
                   "rougeL_f", "caption_len_mean", "caption_len_p90")
DEFAULT_BERTSCORE_MODEL = "roberta-large"


def _metrics():
    # Imported on use: pycocoevalcap / bert-score are not needed for --help or for generation.
    try:
        from vlmslim.benchmarks import metrics
    except ImportError as e:
        raise BenchmarkError(f"quality metrics unavailable ({e}); the generated rows are kept: "
                             "re-run the same command to score them") from e
    return metrics


def bertscore_config(model: str | None):
    """The metrics module's BERTScore settings for a model name/dir, or None when BERTScore is off."""
    if model is None:
        return None
    m = _metrics()
    if model == DEFAULT_BERTSCORE_MODEL:
        return m.BertScoreConfig()  # roberta-large, layer 17, baseline rescaling
    # A local dir (e.g. the offline MiniLM): its last layer, and no rescale baseline exists for it.
    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        layers = json.loads(config.read_text()).get("num_hidden_layers")
        return m.BertScoreConfig(model=model, num_layers=layers, rescale_with_baseline=False)
    return m.BertScoreConfig(model=model, num_layers=None)  # a hub name bert_score knows


# ---------------------------------------------------------------- scoring


def _score_caption(predictions, references, *, n_bootstrap, seed, bertscore, allow_fallback=False):
    m = _metrics()
    result = m.score_captions(predictions, references, n_bootstrap=n_bootstrap, seed=seed,
                              allow_fallback=allow_fallback)
    # BERTScore of a caption: the max over its references (bert_score's multi-reference rule)
    return m.with_bertscore(result, predictions, references, bertscore, n_bootstrap=n_bootstrap, seed=seed)


def _score_vqa(predictions, references, *, n_bootstrap, seed, bertscore, allow_fallback=False):
    return _metrics().score_vqa(predictions, references, n_bootstrap=n_bootstrap, seed=seed)  # no Java needed


def _score_open_vqa(predictions, references, *, n_bootstrap, seed, bertscore, allow_fallback=False):
    return _metrics().score_open_vqa(predictions, references, bertscore=bertscore, n_bootstrap=n_bootstrap,
                                     seed=seed, allow_fallback=allow_fallback)


def _paired_caption(predictions, baseline_predictions, references, *, n_bootstrap, seed, allow_fallback=False):
    # Corpus metrics recomputed on the same resamples for both systems (CIDEr-D's IDF included).
    return _metrics().paired_differences(predictions, baseline_predictions, references, n_bootstrap=n_bootstrap,
                                         seed=seed, allow_fallback=allow_fallback)


@dataclass(frozen=True)
class Task:
    name: str
    prompt: str  # the pinned instruction (caption) or answer-style suffix (vqa, open-vqa)
    max_new_tokens: int
    headline: str  # the metric a one-line summary shows
    metric_keys: tuple[str, ...]  # the metrics tables report (summary.csv columns); summary.json has them all
    instruction: Callable  # (sample, prompt, ocr_tokens) -> text after the image
    score: Callable  # (predictions, references, *, n_bootstrap, seed, bertscore) -> ScoreResult
    uses_bertscore: bool = False
    # Paired CIs vs a baseline: (predictions, baseline predictions, references, *, n_bootstrap, seed,
    # allow_fallback) -> {metric: (diff, lo, hi)}. None: paired differences of the per-sample scores' means.
    paired: Callable | None = None


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        # caption length next to CIDEr: prompt wording moves both (DESIGN.md)
        Task("caption", CAPTION_PROMPT, 64, "cider",
             ("cider", "bleu4", "meteor", "rouge_l", "bertscore_f1", "caption_len_mean"), caption_instruction,
             _score_caption, paired=_paired_caption, uses_bertscore=True),
        # 16 tokens: a "single word or phrase" answer; longer output only inflates latency.
        Task("vqa", VQA_PROMPT, 16, "vqa_accuracy", ("vqa_accuracy",), vqa_instruction, _score_vqa),
        # No suffix: the question is the instruction; answers are paragraphs, hence 256 tokens.
        Task("open-vqa", OPEN_VQA_PROMPT, 256, "rouge_l", ("rouge_l", "rougeL_f", "meteor", "bertscore_f1"),
             open_vqa_instruction, _score_open_vqa, uses_bertscore=True),
    ]
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


def paired_differences(task: Task, predictions, baseline_predictions, references, *, n_bootstrap, seed, bertscore,
                       allow_fallback: bool = False):
    """{metric: (model − baseline, lo, hi)} on the common ids, paired bootstrap over samples.

    Captions: corpus metrics recomputed on the same resamples for both (CIDEr-D IDF included), BERTScore
    as a paired difference of per-sample means. VQA and open VQA: paired differences of the per-sample
    scores' means (for METEOR a per-sample mean, not the corpus aggregate)."""
    m = _metrics()
    if task.paired is not None:
        out = task.paired(predictions, baseline_predictions, references, n_bootstrap=n_bootstrap, seed=seed,
                          allow_fallback=allow_fallback)
        if task.uses_bertscore and bertscore is not None:  # per-sample BERTScore: paired means
            out.update(m.paired_bertscore(predictions, baseline_predictions, references, bertscore,
                                          n_bootstrap=n_bootstrap, seed=seed))
    else:
        kw = dict(n_bootstrap=0, seed=seed, bertscore=bertscore, allow_fallback=allow_fallback)
        ours = task.score(predictions, references, **kw).per_sample
        theirs = task.score(baseline_predictions, references, **kw).per_sample
        keys = sorted(set.intersection(*(set(v) for v in [*ours.values(), *theirs.values()])))
        out = {k: m.paired_mean_differences({i: v[k] for i, v in ours.items()}, {i: v[k] for i, v in theirs.items()},
                                            n_bootstrap=n_bootstrap, seed=seed) for k in keys}
    return {k: tuple(float(x) for x in v) for k, v in out.items()}
