"""Scoring-speed benchmark: 5,000 captions x 5 references, all COCO metrics with 1,000-resample bootstrap CIs.

Times `vlmslim.benchmarks.metrics.score_captions` end to end (and per stage: tokenize, statistics,
bootstrap) against one plain pycocoevalcap pass without CIs, checks that both give the same full-set
values, and writes the numbers to docs/scoring_speed.md.

    python -m studies.scoring_speed                      # 5,000 x 5, B = 1,000, 3 repeats
    python -m studies.scoring_speed --n 500 --repeats 1  # quick look
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import click

from vlmslim.benchmarks.metrics import score_captions

logger = logging.getLogger("scoring_speed")

COCO_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")

# A small scene grammar: each image gets a scene; references paraphrase it (synonyms, templates,
# dropped details), predictions are noisier paraphrases with some wrong words (like a weak captioner).
NOUNS = {
    "man": ["man", "guy", "person", "gentleman"], "woman": ["woman", "lady", "person", "girl"],
    "boy": ["boy", "kid", "child", "young boy"], "girl": ["girl", "kid", "child", "little girl"],
    "dog": ["dog", "puppy", "pup"], "cat": ["cat", "kitten", "kitty"], "horse": ["horse", "pony"],
    "skier": ["skier", "person skiing"], "surfer": ["surfer", "man surfing"], "player": ["player", "athlete"],
    "chef": ["chef", "cook"], "cow": ["cow", "cattle"], "bird": ["bird", "seagull", "pigeon"],
    "elephant": ["elephant"], "giraffe": ["giraffe"], "zebra": ["zebra"], "bear": ["bear", "brown bear"],
}
OBJECTS = {
    "frisbee": ["frisbee", "flying disc"], "umbrella": ["umbrella", "parasol"], "kite": ["kite"],
    "surfboard": ["surfboard", "board"], "skateboard": ["skateboard", "board"], "pizza": ["pizza", "pie"],
    "sandwich": ["sandwich", "sub"], "laptop": ["laptop", "computer", "notebook"], "phone": ["phone", "cell phone"],
    "bench": ["bench", "park bench"], "ball": ["ball", "tennis ball"], "racket": ["racket", "tennis racket"],
    "banana": ["banana"], "cake": ["cake", "birthday cake"], "bicycle": ["bicycle", "bike"],
    "suitcase": ["suitcase", "luggage"], "book": ["book", "novel"], "bowl": ["bowl", "dish"],
    "fence": ["fence", "wooden fence"], "truck": ["truck", "pickup truck"], "bus": ["bus", "city bus"],
    "boat": ["boat", "small boat"], "train": ["train", "passenger train"], "tree": ["tree", "large tree"],
}
VERBS = {
    "holding": ["holding", "carrying"], "riding": ["riding", "on"], "sitting on": ["sitting on", "seated on"],
    "standing next to": ["standing next to", "standing by", "beside"], "looking at": ["looking at", "watching"],
    "playing with": ["playing with", "playing"], "eating": ["eating", "biting into"],
    "walking past": ["walking past", "walking by"], "throwing": ["throwing", "tossing"],
    "jumping over": ["jumping over", "leaping over"], "pulling": ["pulling", "dragging"],
}
ADJECTIVES = ["red", "blue", "green", "yellow", "white", "black", "brown", "small", "large", "old", "young",
              "wooden", "colorful", "striped", "tall", "shiny", "dirty", "wet", "empty", "orange", "pink"]
PLACES = {
    "beach": ["on the beach", "on a sandy beach", "near the ocean", "by the water"],
    "park": ["in a park", "in the park", "on the grass", "in a grassy field"],
    "street": ["on a city street", "on the sidewalk", "in the street", "downtown"],
    "kitchen": ["in a kitchen", "in the kitchen", "at the counter"],
    "snow": ["in the snow", "on a snowy hill", "on a ski slope"], "room": ["in a living room", "inside a room", "on a couch"],
    "field": ["in a field", "in an open field", "on a farm"], "station": ["at a train station", "on the platform"],
    "zoo": ["at the zoo", "in an enclosure"], "lake": ["near a lake", "by the lake", "on the shore"],
}
TEMPLATES = [
    "{det} {adj}{subj} {verb} {det2} {oadj}{obj} {place}",
    "{det} {adj}{subj} is {verb} {det2} {oadj}{obj} {place}",
    "{det} {subj} {verb} {det2} {obj}",
    "{place_cap} {det} {subj} {verb} {det2} {oadj}{obj}",
    "there is {det} {adj}{subj} {verb} {det2} {obj} {place}",
    "{det} close up of {det} {subj} {verb} {det2} {obj}",
    "{det} {adj}{subj} {verb} {det2} {obj} while {det} {other} watches",
]


_ARTICLE = re.compile(r"\b([Aa])n? (?=(\w))")


def _fix_articles(text: str) -> str:
    return _ARTICLE.sub(lambda m: m.group(1) + ("n " if m.group(2) in "aeiou" else " "), text)


def _caption(rng: random.Random, scene: dict, noise: float) -> str:
    """One sentence about the scene; with probability `noise` each slot drifts to a random value."""
    def pick(table, key):
        key = rng.choice(list(table)) if rng.random() < noise else key
        return rng.choice(table[key])

    subj, obj, verb = pick(NOUNS, scene["subj"]), pick(OBJECTS, scene["obj"]), pick(VERBS, scene["verb"])
    place = pick(PLACES, scene["place"])
    adj = (rng.choice(ADJECTIVES) if rng.random() < noise else scene["adj"]) + " " if rng.random() < 0.6 else ""
    oadj = rng.choice(ADJECTIVES) + " " if rng.random() < 0.3 else ""
    text = rng.choice(TEMPLATES).format(
        det="a", adj=adj, subj=subj, verb=verb, det2="a", oadj=oadj, obj=obj,
        place=place, place_cap=place.capitalize() + ",", other=rng.choice(list(NOUNS)),
    )
    text = _fix_articles(" ".join(text.split()))
    text = text[0].upper() + text[1:]
    return text + rng.choice([".", ".", ".", "", " ."])


def make_corpus(n: int, n_refs: int, seed: int) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Seeded fake COCO-like captions: n predictions, n_refs references each."""
    rng = random.Random(seed)
    preds, refs = {}, {}
    for i in range(n):
        scene = {"subj": rng.choice(list(NOUNS)), "obj": rng.choice(list(OBJECTS)), "verb": rng.choice(list(VERBS)),
                 "place": rng.choice(list(PLACES)), "adj": rng.choice(ADJECTIVES)}
        key = f"{100000 + i}"
        refs[key] = [_caption(rng, scene, noise=0.15) for _ in range(n_refs)]
        preds[key] = _caption(rng, scene, noise=rng.choice([0.1, 0.3, 0.5, 0.8]))
    return preds, refs


def plain_pycocoevalcap(preds: dict[str, str], refs: dict[str, list[str]]) -> tuple[dict[str, float], dict[str, float]]:
    """One pass of pycocoevalcap's scorers (no CIs), as COCOEvalCap runs them; returns scores and seconds."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    times, scores = {}, {}
    t0 = time.perf_counter()
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": preds[k]}] for k in refs})
    times["tokenize"] = time.perf_counter() - t0
    for name, make in (("bleu", lambda: Bleu(4)), ("meteor", Meteor), ("rouge_l", Rouge), ("cider", Cider)):
        t0 = time.perf_counter()
        scorer = make()  # METEOR's JVM start counts: every pycocoevalcap user pays it
        value, _ = scorer.compute_score(gts, res, verbose=0) if name == "bleu" else scorer.compute_score(gts, res)
        times[name] = time.perf_counter() - t0
        if name == "bleu":
            scores.update({f"bleu{k + 1}": v for k, v in enumerate(value)})
        else:
            scores[name] = float(value)
    times["total"] = sum(times.values())
    return scores, times


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children (the JVMs)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr.splitlines()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()), "cpu": cpu, "load average (1/5/15 min) at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(), "java": java[0] if java else "missing",
        **{pkg: version(pkg) for pkg in ("pycocoevalcap", "numpy", "scipy", "rouge-score")},
    }


def write_report(path: Path, info: dict, n: int, n_refs: int, n_bootstrap: int, runs: list, plain: tuple | None) -> None:
    totals = [r["total"] for r in runs]
    lines = [
        "# Caption scoring speed", "",
        f"`python -m studies.scoring_speed` — {n:,} predictions x {n_refs} references (seeded fake COCO-like "
        f"captions), all COCO metrics (BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D) plus rouge-score ROUGE-1/2/L and "
        f"caption length, each with a {n_bootstrap:,}-resample bootstrap 95% CI (CIDEr-D IDF recomputed per resample).",
        "", "Goal (issue 6): < 60 s on 2 CPU cores.", "", "## Machine", "",
        *[f"- {k}: {v}" for k, v in info.items()], "",
        f"## `score_captions(..., n_bootstrap={n_bootstrap})`, {len(runs)} runs", "",
        "| run | total s | tokenize s | statistics s | bootstrap s | CPU s (Python + JVMs) |", "|---|---|---|---|---|---|",
        *[f"| {i + 1} | {r['total']:.1f} | {r['tokenize']:.1f} | {r['stats']:.1f} | {r['bootstrap']:.1f} | {r['cpu']:.1f} |"
          for i, r in enumerate(runs)],
        "", f"Median total: **{statistics.median(totals):.1f} s** (min {min(totals):.1f}, max {max(totals):.1f}).", "",
        "Stages: *tokenize* = one PTB (Java) call for all captions while the METEOR JVM starts; *statistics* = "
        "METEOR segment statistics from the jar (in a background thread) while Python counts BLEU/CIDEr-D n-grams, "
        "ROUGE-L and rouge-score; *bootstrap* = every corpus metric for the full set and all resamples in numpy/scipy. "
        "*CPU s* = user + system seconds of Python and its JVMs: it does not depend on other jobs on the machine "
        "(see the load average above), wall time does.",
    ]
    if plain is not None:
        scores, times = plain
        ours = runs[0]["metrics"]
        lines += [
            "", "## One plain pycocoevalcap pass (no CIs), same data", "",
            "| stage | s |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in times.items()], "",
            "Same full-set values (ours − pycocoevalcap):", "",
            "| metric | pycocoevalcap | ours | difference |", "|---|---|---|---|",
            *[f"| {k} | {scores[k]:.6f} | {ours[k]:.6f} | {ours[k] - scores[k]:.1e} |" for k in COCO_KEYS],
            "", f"Recomputing CIs through pycocoevalcap instead (one pass per resample) would take about "
            f"{n_bootstrap:,} x {times['total']:.0f} s = {n_bootstrap * times['total'] / 3600:.1f} h.",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@click.command()
@click.option("--n", default=5000, show_default=True, help="Predictions.")
@click.option("--n-refs", default=5, show_default=True, help="References per prediction.")
@click.option("--n-bootstrap", default=1000, show_default=True)
@click.option("--repeats", default=3, show_default=True, help="Timed runs of score_captions.")
@click.option("--seed", default=0, show_default=True)
@click.option("--baseline/--no-baseline", default=True, help="Also time one plain pycocoevalcap pass.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("docs/scoring_speed.md"), show_default=True)
def main(n: int, n_refs: int, n_bootstrap: int, repeats: int, seed: int, baseline: bool, out: Path) -> None:
    """Time caption scoring with bootstrap CIs and write a markdown report."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = machine()
    preds, refs = make_corpus(n, n_refs, seed)
    runs = []
    for i in range(repeats):
        t0, c0 = time.perf_counter(), cpu_seconds()
        result = score_captions(preds, refs, n_bootstrap=n_bootstrap, seed=seed)
        total = time.perf_counter() - t0
        runs.append({"total": total, "cpu": cpu_seconds() - c0, **result.notes["timings_s"], "metrics": result.metrics})
        logger.info("run %d: %.1f s %s", i + 1, total, result.notes["timings_s"])
    logger.info("metrics %s", {k: round(v, 4) for k, v in runs[0]["metrics"].items()})
    plain = plain_pycocoevalcap(preds, refs) if baseline else None
    if plain is not None:
        logger.info("plain pycocoevalcap: %s", {k: round(v, 1) for k, v in plain[1].items()})
    info["load average (1/5/15 min) at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    write_report(out, info, n, n_refs, n_bootstrap, runs, plain)
    click.echo(f"wrote {out}: median {statistics.median(r['total'] for r in runs):.1f} s")


if __name__ == "__main__":
    main()
