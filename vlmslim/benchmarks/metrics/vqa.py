"""TextVQA accuracy with the EvalAI answer normalisation (as in the TextVQA/M4C evaluator).

Both the prediction and every human answer are normalised; accuracy is the mean over the leave-one-out
subsets of the human answers of min(1, matches / 3). With 10 answers: 1 match → 0.3, 2 → 0.6,
3 → 0.9, 4 or more → 1.0.
"""

from __future__ import annotations

import re

import numpy as np

from vlmslim.benchmarks.metrics.bootstrap import ScoreResult, resample_counts, scored_ids, summarise, weighted_mean
from vlmslim.errors import BenchmarkError

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# deleted when they touch a space somewhere in the answer, else replaced by a space ("t-shirt" → "t shirt")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# a period not followed by a digit is dropped ("3.5" stays). The official scripts pass re.UNICODE (32)
# where re.sub expects `count`, so at most 32 periods go; kept for identical scores.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_MAX = 32

# the official contractions table (keys with capitals can never match lower-cased text; kept as published)
_CONTRACTIONS = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've|couldnt've couldn't've|
didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've|hadn'tve hadn't've|hasnt hasn't|
havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's|howd how'd|howll how'll|hows how's|
Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd|itd've it'd've|it'dve it'd've|itll it'll|
let's let's|maam ma'am|mightnt mightn't|mightnt've mightn't've|mightn'tve mightn't've|mightve might've|
mustnt mustn't|mustve must've|neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|
'ows'at 'ow's'at|'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's|
shouldve should've|shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|
somebody'd somebodyd|somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll|
somebodys somebody's|someoned someone'd|someoned've someone'd've|someone'dve someone'd've|
someonell someone'll|someones someone's|somethingd something'd|somethingd've something'd've|
something'dve something'd've|somethingll something'll|thats that's|thered there'd|thered've there'd've|
there'dve there'd've|therere there're|theres there's|theyd they'd|theyd've they'd've|they'dve they'd've|
theyll they'll|theyre they're|theyve they've|twas 'twas|wasnt wasn't|wed've we'd've|we'dve we'd've|
weve we've|werent weren't|whatll what'll|whatre what're|whats what's|whatve what've|whens when's|
whered where'd|wheres where's|whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|
whos who's|whove who've|whyll why'll|whyre why're|whys why's|wont won't|wouldve would've|
wouldnt wouldn't|wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll|
y'allll y'all'll|yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|
youd've you'd've|you'dve you'd've|youll you'll|youre you're|youve you've
"""
CONTRACTIONS = dict(pair.split() for pair in _CONTRACTIONS.replace("\n", "").split("|"))
NOTE = "TextVQA accuracy: EvalAI normalisation of prediction and answers; mean over leave-one-out subsets of min(1, matches/3)"


def _punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        # the decision looks at the input text, the edit applies to the running output (as upstream)
        out = out.replace(p, "" if (p + " " in text or " " + p in text) else " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX)


def normalize_vqa_answer(answer: str) -> str:
    """EvalAI answer normalisation: lowercase, punctuation, number words → digits, no articles, contractions."""
    # EvalAI's word_tokenize: commas and '?' go, "'s" is split off. (Commas being gone already, the
    # digit-comma-digit rule of the punctuation step can never fire, so it is omitted.)
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = _punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Soft accuracy of one prediction against the human answers (10 in TextVQA)."""
    if not answers:
        raise ValueError("vqa_accuracy: answers must be a non-empty list")
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    total = sum(g == pred for g in gts)
    # leaving answer i out removes one match exactly when answer i is itself a match
    accs = [min(1.0, (total - (g == pred)) / 3.0) for g in gts]
    return sum(accs) / len(accs)


def score_vqa(predictions: dict[str, str], answers: dict[str, list[str]], *, n_bootstrap: int = 1000,
              seed: int = 0) -> ScoreResult:
    """Mean TextVQA accuracy with a 95% bootstrap CI and per-sample accuracies."""
    ids = scored_ids(predictions, answers, "answers")
    for k in ids:
        if isinstance(answers[k], str) or not answers[k]:
            raise BenchmarkError(f"sample {k!r}: answers must be a non-empty list of strings")
    acc = np.array([vqa_accuracy(predictions[k], answers[k]) for k in ids])
    values = {"vqa_accuracy": weighted_mean(acc, resample_counts(len(ids), n_bootstrap, seed))}
    return summarise(
        values,
        per_sample={k: {"vqa_accuracy": float(a)} for k, a in zip(ids, acc)},
        notes={"vqa_accuracy": NOTE, "n_samples": len(ids), "n_bootstrap": n_bootstrap, "seed": seed,
               "ci": "95% percentile bootstrap over questions"},
    )
