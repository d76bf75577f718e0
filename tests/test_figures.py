"""Figures step: exact frontiers, label placement, results-dir loading and `vlmslim figures` end to end
on fabricated results dirs (no model, no network)."""

from __future__ import annotations

import copy
import importlib.util
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vlmslim.cli import _COST_CHOICES, cli
from vlmslim.errors import FiguresError
from vlmslim.figures import COST_AXES, choose_baseline, frontier_order, load_run, load_runs, pareto_front
from vlmslim.figures.labels import place_labels
from vlmslim.figures.style import DPI, FRONTIER_FIGSIZE, bar_figsize, combined_figsize

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------
# Pareto frontier on hand-made point sets: (quality, cost), higher quality and lower cost are better.


@pytest.mark.parametrize(
    "points, expected",
    [
        ([], []),
        ([(0.5, 3.0)], [True]),  # a single point is its own frontier
        ([(1.0, 1.0), (2.0, 1.0), (0.5, 2.0)], [False, True, False]),  # (2, 1) dominates both others
        ([(1.0, 5.0), (0.9, 5.0)], [True, False]),  # equal cost, lower quality: dominated
        ([(1.0, 5.0), (1.0, 6.0)], [True, False]),  # equal quality, higher cost: dominated
        ([(1.0, 1.0), (1.0, 1.0), (0.5, 2.0)], [True, True, False]),  # exact duplicates both stay
        ([(1.0, 2.0), (1.0, 2.0), (1.1, 1.0)], [False, False, True]),  # duplicates dominated together
        ([(0.5, 1.0), (0.7, 2.0), (0.9, 3.0)], [True, True, True]),  # a staircase: all on the front
        ([(0.9, 1.0), (0.5, 2.0), (0.7, 3.0), (0.95, 4.0)], [True, False, False, True]),
    ],
)
def test_pareto_front_exact(points, expected):
    assert pareto_front(points) == expected


def test_pareto_front_excludes_missing_values():
    # None / NaN / inf are never on the front and never dominate: (0.5, 2) stays although a NaN-cost
    # point has a higher quality.
    points = [(None, 1.0), (2.0, float("nan")), (0.5, 2.0), (3.0, float("inf")), (float("nan"), 0.1)]
    assert pareto_front(points) == [False, False, True, False, False]


def test_pareto_front_directions():
    points = [(1.0, 1.0), (2.0, 2.0)]
    assert pareto_front(points) == [True, True]
    assert pareto_front(points, higher_quality=False) == [True, False]  # (1, 1) lower and cheaper
    assert pareto_front(points, lower_cost=False) == [False, True]  # (2, 2) better and "costlier"


def test_frontier_order_cheapest_first_and_deterministic_for_ties():
    points = [(1.1, 3.0), (0.9, 1.0), (1.0, 2.0), (1.0, 2.0), (0.8, 2.5)]
    assert frontier_order(points) == [1, 2, 3, 0]


def test_pareto_front_property_on_random_integer_grid():
    """Every front point is undominated; every other valid point is dominated by a front point."""
    rng = random.Random(0)
    points = [(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(60)]  # many ties and duplicates

    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and a != b

    flags = pareto_front(points)
    front = [p for p, f in zip(points, flags) if f]
    for p, f in zip(points, flags):
        assert f == (not any(dominates(q, p) for q in points)), p
        if not f:
            assert any(dominates(q, p) for q in front)


# ---------------------------------------------------------------------------------------------------
# Label placement (pure, pixel space).


def _rects(anchors, sizes, placements):
    return [(a[0] + p.dx, a[1] + p.dy, a[0] + p.dx + s[0], a[1] + p.dy + s[1]) for a, s, p in zip(anchors, sizes, placements)]


def test_place_labels_free_label_goes_right_without_leader():
    # starts at the marker's edge (radius 4) + the first distance (5), vertically centred
    [p] = place_labels([(100, 100)], [(40, 10)], marker_radii=[4], radii=(5, 10))
    assert (p.dx, p.dy, p.leader, p.overlap) == (9, -5, False, 0)


def test_place_labels_never_nearer_another_point_without_leader():
    # B sits 20 px right of A on one row: A's label cannot go right (B's marker), and B's label, placed
    # second, must not land where it reads as A's.
    from vlmslim.figures.labels import _distance

    anchors, sizes = [(100, 100), (120, 100)], [(30, 10), (30, 10)]
    placements = place_labels(anchors, sizes, marker_radii=[4, 4], bounds=(0, 0, 300, 200))
    for i, (a, s, p) in enumerate(zip(anchors, sizes, placements)):
        rect = (a[0] + p.dx, a[1] + p.dy, a[0] + p.dx + s[0], a[1] + p.dy + s[1])
        own, other = _distance(rect, a), _distance(rect, anchors[1 - i])
        assert p.overlap == 0 and (own < other or p.leader), (i, p, own, other)


def test_segment_hits():
    from vlmslim.figures.labels import segment_hits

    box = (10, 10, 20, 20)
    assert segment_hits((0, 15), (30, 15), box)  # straight through
    assert not segment_hits((0, 0), (30, 5), box)  # passes below
    assert not segment_hits((0, 15), (9, 15), box)  # stops short
    assert segment_hits((15, 15), (40, 40), box)  # starts inside


def test_place_labels_cluster_has_no_overlaps_and_stays_inside():
    anchors = [(200 + 6 * i, 150 + 4 * (i % 3)) for i in range(6)]  # six points within 30 px
    sizes = [(50, 11)] * 6
    bounds = (0, 0, 400, 300)
    placements = place_labels(anchors, sizes, marker_radii=[4] * 6, bounds=bounds, gap=3)
    rects = _rects(anchors, sizes, placements)
    assert all(p.overlap == 0 for p in placements)
    for i, a in enumerate(rects):
        assert bounds[0] <= a[0] and a[2] <= bounds[2] and bounds[1] <= a[1] and a[3] <= bounds[3]
        for b in rects[i + 1:]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])


# ---------------------------------------------------------------------------------------------------
# Fabricated results dirs. name: (precision, pruning, cider, ci half-width, latency, vram, size)
# Frontiers by hand (energy is null everywhere, as on a CPU run):
#   latency: glu30 (0.50, 0.98) → base (0.60, 1.10); nf4 and fp4 tie at 0.80, both below base
#   vram/size: glu30-nf4 → nf4 → int8 → base; fp4 ties nf4's cost with lower quality → dominated
RUNS = {
    "base": ("16-bit", [], 1.10, 0.05, 0.60, 15000, 13500),
    "int8": ("int8", [], 1.09, 0.05, 2.00, 9000, 7000),
    "nf4": ("nf4", [], 1.05, 0.05, 0.80, 5600, 3900),
    "fp4": ("fp4", [], 1.00, 0.06, 0.80, 5600, 3900),
    "glu30": ("16-bit", [{"kind": "glu", "ratio": 0.3, "importance": "maw"}], 0.98, 0.06, 0.50, 12300, 10600),
    "glu30-nf4": ("nf4", [{"kind": "glu", "ratio": 0.3}, {"kind": "heads", "ratio": 0.25}], 0.94, 0.06, 0.70, 4700, 3100),
}
EXPECTED_FRONT = {
    "latency": ["glu30", "base"],
    "vram": ["glu30-nf4", "nf4", "int8", "base"],
    "size": ["glu30-nf4", "nf4", "int8", "base"],
}
N_IDS = 10


PROMPT = "Provide a one-sentence caption for the provided image."


def _protocol(task="caption", **changes):
    """summary.json's `protocol` block, keys and shapes as `vlmslim bench` writes it (a tiny bench run)."""
    return {"task": task, "prompt": PROMPT, "prompt_example": f"USER: <image> {PROMPT} ASSISTANT:",
            "max_new_tokens": 64, "batch_size": 1, "greedy": True,
            "generate_kwargs": {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0},
            "dtype": "as saved", "resolved_dtype": "float16", "device": "cpu", "quant": None, "ocr_tokens": False,
            "seed": 0, "bootstrap": 1000, "warmup_batches": 1, "bertscore_model": None, **changes}


def _summary(name, data_dir, task="caption", n_samples=500, protocol=None, **overrides):
    precision, pruning, cider, half, latency, vram, size = RUNS[name]
    summary = {
        "model": {"name": name, "path": f"ckpt/{name}", "family": "llava", "precision": precision,
                  "pruning": pruning, "is_baseline": name == "base"},
        "task": task,
        "dataset": {"path": str(data_dir), "name": "tiny-coco", "sha256": "f" * 64, "limit": None, "seed": 0},
        "n_samples": n_samples,
        "metrics": {"cider": cider, "bleu4": round(cider * 0.27, 4), "meteor": round(0.25 + cider / 40, 4),
                    "mean_len_words": 9.5},
        "ci": {"cider": [cider - half, cider + half], "bleu4": [cider * 0.26, cider * 0.28]},
        "efficiency": {"latency_s_p50": latency, "latency_s_p90": latency * 1.3, "peak_vram_mb": vram,
                       "model_size_mb": size, "energy_wh_per_sample": None, "params": 7_000_000_000,
                       "energy": {"note": "energy not measured"}, "batch_size": (protocol or {}).get("batch_size", 1)},
        "environment": {"device": "cpu (Intel(R) Xeon(R) Processor)", "git_revision": "abc"},
        "protocol": _protocol(task, **(protocol or {})),
        "checkpoint_sha256": name * 4,
        "data_dir": str(data_dir),
        "an_extra_key_from_a_newer_bench": {"ignored": True},
    }
    summary.update(overrides)
    return summary


def _samples(name):
    """Per-sample CIDEr: base 1.0 everywhere; glu30 drops by 0.1·i on sample i, so larger i = worse."""
    rows = []
    ids = range(N_IDS - 1) if name == "int8" else range(N_IDS)  # int8 lacks s09: never in the gallery
    for i in ids:
        score = 1.0 - (0.1 * i if name == "glu30" else 0.01 * i if name != "base" else 0.0)
        pred = f"<script>alert({i})</script> a | pipe" if name == "nf4" else f"{name} says shape {i}"
        rows.append({"id": f"s{i:02d}", "image": f"images/s{i:02d}.png", "prediction": pred,
                     "references": [f"a shape number {i}", "a <b>shape</b>"], "scores": {"cider": score},
                     "latency_s": 0.5, "ttft_s": 0.1, "tokens": 5})
    return rows


def write_run(root: Path, name: str, data_dir: Path, engine: str = "eager", **overrides) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(_summary(name, data_dir, **overrides)))
    # The bench records the engine in config.yaml's `generation` block (not in summary.json's protocol).
    (run_dir / "config.yaml").write_text(f"config:\n  model: {name}\n  engine: {engine}\ngeneration:\n  engine: {engine}\n")
    lines = [json.dumps(r) for r in _samples(name)]
    if name == "fp4":
        lines.append('{"id": "s0')  # a truncated last line, as a killed benchmark leaves it
    (run_dir / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("results")
    data_dir = root / "data"
    (data_dir / "images").mkdir(parents=True)
    for i in range(N_IDS):
        Image.new("RGB", (8, 6), (20 * i, 100, 200)).save(data_dir / "images" / f"s{i:02d}.png")
    return [write_run(root, name, data_dir) for name in RUNS]


def _invoke(*args):
    return CliRunner().invoke(cli, ["figures", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def figures_out(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("figs") / "out"
    res = _invoke(*results, "--out", out, "--metric", "cider", "--spotcheck", "4", "--seed", "3")
    assert res.exit_code == 0, res.output
    return out


# ---------------------------------------------------------------------------------------------------
# Loading.


def test_load_run_reads_fields_and_tolerates_extra_keys(results):
    run = load_run(results[-1])
    assert (run.name, run.precision, run.pruning_method, run.task, run.n_samples) == ("glu30-nf4", "nf4", "combined", "caption", 500)
    assert run.metrics["cider"] == 0.94 and run.ci["cider"] == pytest.approx((0.88, 1.00))
    assert run.cost("energy_wh_per_sample") is None and run.cost("model_size_mb") == 3100
    assert run.pruning_text == "glu 30% + heads 25%"
    assert "an_extra_key_from_a_newer_bench" in run.summary


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "is not a results dir (no summary.json)"),
        (lambda d: (d.mkdir(), (d / "summary.json").write_text("{not json")), "is not valid JSON"),
        (lambda d: (d.mkdir(), (d / "summary.json").write_text('{"model": {"name": "x"}, "task": "caption"}')),
         "lacks n_samples, metrics, efficiency, model.precision"),
    ],
)
def test_load_run_errors_are_specific(tmp_path, make, message):
    bad = tmp_path / "bad"
    make(bad)
    with pytest.raises(FiguresError, match=re.escape(message)):
        load_run(bad)


def test_choose_baseline(results):
    runs = load_runs(results)
    assert choose_baseline(runs).name == "base"  # is_baseline
    assert choose_baseline(runs, "nf4").name == "nf4"  # by name
    assert choose_baseline(runs, str(results[1])).name == "int8"  # by dir
    with pytest.raises(FiguresError, match="matches no run"):
        choose_baseline(runs, "nope")
    for run in runs:
        run.is_baseline = False
    assert choose_baseline(runs).name == "base"  # the only unpruned 16-bit run
    runs[4].pruning = []  # now glu30 is unpruned 16-bit too: ambiguous
    with pytest.raises(FiguresError, match="several runs are unpruned 16-bit"):
        choose_baseline(runs)


# ---------------------------------------------------------------------------------------------------
# `vlmslim figures` end to end.


def test_figures_writes_every_file(figures_out):
    names = {p.relative_to(figures_out).as_posix() for p in figures_out.rglob("*")}
    for stem in ["frontier_latency", "frontier_vram", "frontier_size", "bars_cider", "bars_bleu4", "bars_meteor", "combined"]:
        assert {f"{stem}.png", f"{stem}.svg"} <= names, stem
    assert {"summary.md", "frontier.json", "spotcheck.html", "spotcheck.md"} <= names
    assert not any("energy" in n for n in names)  # energy is null in every run: axis skipped
    assert not any("mean_len" in n for n in names)  # output length is not a quality metric
    assert len([n for n in names if n.startswith("spotcheck_images/")]) == 4
    assert not list(figures_out.parent.glob("*.partial-*"))


def test_pngs_have_the_stated_size(figures_out):
    # figsize × dpi, exactly: no bbox_inches="tight" cropping.
    expected = {"frontier_latency": FRONTIER_FIGSIZE, "bars_cider": bar_figsize(len(RUNS)),
                "combined": combined_figsize(3 + 1)}  # 3 cost axes + the change heatmap
    assert (round(FRONTIER_FIGSIZE[0] * DPI), round(FRONTIER_FIGSIZE[1] * DPI)) == (1350, 825)
    for stem, (w, h) in expected.items():
        with Image.open(figures_out / f"{stem}.png") as im:
            im.load()
            assert im.size == (round(w * DPI), round(h * DPI)), stem
            assert DPI >= 150 and im.info["dpi"][0] == pytest.approx(DPI, abs=0.5)
    for png in figures_out.glob("*.png"):
        with Image.open(png) as im:
            im.verify()
    assert (figures_out / "frontier_size.svg").read_text().lstrip().startswith("<?xml")


def test_frontier_json_matches_hand_computed_fronts(figures_out, results):
    data = json.loads((figures_out / "frontier.json").read_text())
    assert data["metric"] == "cider" and data["baseline"] == "base"
    assert set(data["axes"]) == set(EXPECTED_FRONT)
    for axis, names in EXPECTED_FRONT.items():
        front = data["axes"][axis]["frontier"]
        assert [p["run"] for p in front] == names, axis
        for p in front:
            _, _, cider, _, latency, vram, size = RUNS[p["run"]]
            assert p["quality"] == cider
            assert p["cost"] == {"latency": latency, "vram": vram, "size": size}[axis]
        assert {p["run"] for p in data["axes"][axis]["points"] if p["on_frontier"]} == set(names)
    assert data["axes"]["size"]["log_scale"] is True and data["axes"]["size"]["cost_key"] == "model_size_mb"
    assert "energy" in data["skipped_axes"]


def test_summary_md_bolds_exactly_the_frontier_runs(figures_out):
    text = (figures_out / "summary.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Run")]
    assert len(rows) == len(RUNS)
    bold = {re.match(r"\| \*\*(.+?)(?: \(baseline\))?\*\*", r).group(1).replace("\\", "") for r in rows if r.startswith("| **")}
    assert bold == {n for names in EXPECTED_FRONT.values() for n in names}
    fp4 = next(r for r in rows if r.startswith("| fp4"))
    assert "-9.1%" in fp4 and "5,600" in fp4  # (1.00 - 1.10) / 1.10


def test_spotcheck_gallery(figures_out):
    html_text = (figures_out / "spotcheck.html").read_text()
    ids = re.findall(r"<code>(s\d\d)</code>", html_text)
    assert len(ids) == 4 and "s09" not in ids  # s09 is missing from int8: not common to all runs
    # glu30 drops 0.1·i on sample i: worst drop first means descending i.
    assert ids == sorted(ids, reverse=True)
    assert html_text.count("data:image/jpeg;base64,") == 4
    assert "<script>" not in html_text and "src='http" not in html_text  # escaped, self-contained
    assert html_text.count("&lt;script&gt;alert(") == 4
    assert "a &lt;b&gt;shape&lt;/b&gt;" in html_text
    md = (figures_out / "spotcheck.md").read_text()
    for link in re.findall(r"\]\((spotcheck_images/[^)]+)\)", md):
        assert (figures_out / link).is_file()
    assert re.findall(r"^## \d+\. `(s\d\d)`", md, flags=re.M) == ids
    assert "worst Δ vs baseline" in md and "(glu30)" in md


def test_spotcheck_is_seeded(results, figures_out, tmp_path):
    out = tmp_path / "again"
    assert _invoke(*results, "--out", out, "--metric", "cider", "--spotcheck", "4", "--seed", "3", "--cost", "latency").exit_code == 0
    assert (out / "spotcheck.md").read_text() == (figures_out / "spotcheck.md").read_text()


def test_mixing_tasks_is_refused(results, tmp_path):
    data_dir = Path(load_run(results[0]).data_dir)
    vqa = write_run(tmp_path / "r", "nf4", data_dir, task="vqa")
    out = tmp_path / "out"
    res = _invoke(results[0], vqa, "--out", out)
    assert res.exit_code == 1
    assert "runs differ in task (caption: base vs vqa: nf4)" in res.output and "--allow-mixed" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob("out*"))
    res = _invoke(results[0], vqa, "--out", out, "--allow-mixed", "--cost", "size", "--spotcheck", "0")
    assert res.exit_code == 0, res.output
    assert "caption/vqa" in (out / "summary.md").read_text()


def test_metric_missing_everywhere_and_somewhere(results, tmp_path):
    res = _invoke(*results, "--out", tmp_path / "o1", "--metric", "vqa_accuracy")
    assert res.exit_code == 1
    assert "metric 'vqa_accuracy' is in none of the runs; available: cider, bleu4, meteor" in res.output
    assert not (tmp_path / "o1").exists()

    # A run without meteor is left out of meteor plots (with a warning) but kept elsewhere.
    data_dir = Path(load_run(results[0]).data_dir)
    summary = _summary("nf4", data_dir)
    del summary["metrics"]["meteor"]
    no_meteor = write_run(tmp_path / "r", "nf4", data_dir, metrics=summary["metrics"])
    out = tmp_path / "o2"
    res = _invoke(results[0], results[4], no_meteor, "--out", out, "--metric", "meteor", "--cost", "latency", "--spotcheck", "0")
    assert res.exit_code == 0, res.output
    data = json.loads((out / "frontier.json").read_text())
    assert [p["run"] for p in data["axes"]["latency"]["points"]] == ["base", "glu30"]
    assert data["axes"]["latency"]["excluded"] == {"nf4": "no meteor"}
    assert "WARNING vlmslim.figures.make: meteor is missing from nf4" in res.stderr  # the CLI logs to stderr


def test_existing_out_refused_unless_overwrite(results, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    args = [*results[:2], "--out", out, "--cost", "latency", "--spotcheck", "0"]
    res = _invoke(*args)
    assert res.exit_code == 1 and "exists; pass --overwrite" in res.output
    assert _invoke(*args, "--overwrite").exit_code == 0
    assert not (out / "old.txt").exists() and (out / "frontier_latency.png").is_file()
    res = _invoke(*args[:2], "--out", results[0], "--overwrite")  # never replace a results dir
    assert res.exit_code == 1 and "would replace the results dir" in res.output
    assert (results[0] / "summary.json").is_file()


def test_not_a_results_dir_is_one_line(tmp_path):
    res = _invoke(tmp_path, "--out", tmp_path / "o")
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: {tmp_path} is not a results dir (no summary.json); run `vlmslim bench … --out {tmp_path}` first"


def test_cli_cost_choices_match_registry():
    assert _COST_CHOICES == [*COST_AXES, "all"]


@pytest.mark.slow  # a fresh interpreter imports the figures stack (~2.5 s)
def test_figures_never_import_torch(results, tmp_path):
    code = (
        "import sys; from vlmslim.figures import make_figures, FiguresConfig\n"
        f"make_figures({[str(r) for r in results[:3]]!r}, {str(tmp_path / 'o')!r}, FiguresConfig(costs=('size',), spotcheck=2))\n"
        "import vlmslim.cli\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_example_script_is_importable():
    # The README figure's generator must stay in sync with the API it calls.
    spec = importlib.util.spec_from_file_location("make_example_figures", REPO / "docs/examples/make_example_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.write_results) and len(module.RUNS) >= 5


def test_single_run_without_cis_or_scores(results, tmp_path):
    """One checkpoint, no CIs, no per-sample scores: still a figure set, gallery in sampled order."""
    data_dir = Path(load_run(results[0]).data_dir)
    run = write_run(tmp_path / "r", "base", data_dir, ci={})
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    (run / "samples.jsonl").write_text("".join(json.dumps({**r, "scores": {}}) + "\n" for r in rows))
    out = tmp_path / "o"
    res = _invoke(run, "--out", out, "--cost", "size", "--spotcheck", "3")
    assert res.exit_code == 0, res.output
    assert (out / "combined.png").is_file() and (out / "spotcheck.html").is_file()
    assert [p["run"] for p in json.loads((out / "frontier.json").read_text())["axes"]["size"]["frontier"]] == ["base"]


# ---------------------------------------------------------------------------------------------------
# `vlmslim figures results/*`: files next to the results dirs (issue 12, item 13).


def test_files_among_results_dirs_are_skipped_dirs_still_checked(results, tmp_path):
    # A multi-model bench writes failures.json next to the results dirs, even when nothing failed.
    (tmp_path / "failures.json").write_text("[]\n")
    out = tmp_path / "o"
    res = _invoke(results[0], results[4], tmp_path / "failures.json", "--out", out, "--cost", "latency", "--spotcheck", "0")
    assert res.exit_code == 0, res.output
    data = json.loads((out / "frontier.json").read_text())
    assert [p["run"] for p in data["axes"]["latency"]["points"]] == ["base", "glu30"]
    assert data["config"]["results_dirs"] == [str(results[0]), str(results[4])]
    # Only files: nothing to plot is still an error, naming what was passed.
    res = _invoke(tmp_path / "failures.json", "--out", tmp_path / "o2")
    assert res.exit_code == 1 and res.output.startswith("Error: no results dir among the 1 path(s) given")
    # A directory that is not a results dir is still refused, whatever sits next to it.
    (tmp_path / "notes").mkdir()
    res = _invoke(results[0], tmp_path / "notes", tmp_path / "failures.json", "--out", tmp_path / "o3")
    assert res.exit_code == 1 and "notes is not a results dir (no summary.json)" in res.output
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


# ---------------------------------------------------------------------------------------------------
# Runs measured under different protocols (issue 12, item 12): README step 4 followed literally benched
# the base at --batch-size 8 and the rest at 1, and the latency frontier showed a false 4.7x speedup.

_OTHERS = ("glu30", "nf4")  # benched with the default protocol; "base" gets the change


@pytest.mark.parametrize(
    "key, change, values",
    [
        ("batch_size", dict(protocol={"batch_size": 8}), "8: base vs 1: glu30, nf4"),
        ("max_new_tokens", dict(protocol={"max_new_tokens": 32}), "32: base vs 64: glu30, nf4"),
        ("device", dict(environment={"device": "cuda:0 (NVIDIA H200)"}),
         "cuda (NVIDIA H200): base vs cpu (Intel(R) Xeon(R) Processor): glu30, nf4"),
        ("dtype", dict(protocol={"dtype": "bfloat16"}), "bfloat16: base vs as saved: glu30, nf4"),
        ("engine", dict(protocol={"engine": "compiled"}), "compiled: base vs eager: glu30, nf4"),
        ("engine", dict(engine="compiled"), "compiled: base vs eager: glu30, nf4"),  # from config.yaml
        ("prompt", dict(protocol={"prompt": "Describe the image."}),
         "'Describe the image.': base vs 'Provide a one-sentence caption for the provided image.': glu30, nf4"),
        ("ocr_tokens", dict(protocol={"ocr_tokens": True}), "True: base vs False: glu30, nf4"),
        ("limit", dict(dataset={"path": "d", "name": "tiny-coco", "sha256": "f" * 64, "limit": 100, "seed": 0}),
         "100 (seed 0): base vs all: glu30, nf4"),
        ("dataset", dict(dataset={"path": "d", "name": "tiny-coco", "sha256": "e" * 64, "limit": None, "seed": 0}),
         "eeeeeeeeeeee: base vs ffffffffffff: glu30, nf4"),
        ("task", dict(task="vqa"), "vqa: base vs caption: glu30, nf4"),
    ],
)
def test_protocol_difference_is_refused_naming_key_and_runs(results, tmp_path, key, change, values):
    data_dir = Path(load_run(results[0]).data_dir)
    base = write_run(tmp_path / "r", "base", data_dir, **change)
    others = [results[list(RUNS).index(n)] for n in _OTHERS]
    out = tmp_path / "out"
    res = _invoke(base, *others, "--out", out)
    assert res.exit_code == 1
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert res.output.startswith(f"Error: runs differ in {key} ({values})"), res.output
    assert "--allow-mixed" in res.output
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_same_gpu_model_on_another_index_is_the_same_device(results, tmp_path):
    data_dir = Path(load_run(results[0]).data_dir)
    runs = [write_run(tmp_path / "r", n, data_dir, environment={"device": f"cuda:{i} (NVIDIA H200)"})
            for i, n in enumerate(("base", "glu30"))]
    res = _invoke(*runs, "--out", tmp_path / "o", "--cost", "size", "--spotcheck", "0")
    assert res.exit_code == 0, res.output


def _frontier_fig(runs, axis="latency", metric="cider"):
    """The frontier figure `make_figures` would save, kept in memory to inspect its texts."""
    from vlmslim.figures.analysis import compute_frontier
    from vlmslim.figures.plots import frontier_figure

    baseline = choose_baseline(runs)
    af = compute_frontier(runs, metric, axis, baseline)
    return af, frontier_figure(af, metric, "ctx")


def _label_texts(fig) -> dict[str, str]:
    """{run name: label text} of the point labels (gid 'label:<run>')."""
    return {t.get_gid()[len("label:"):]: t.get_text() for t in fig.axes[0].texts if (t.get_gid() or "").startswith("label:")}


def test_latency_axis_says_per_request_and_batch(results):
    from vlmslim.figures.runs import check_compatible

    runs = load_runs(results[:3])
    check_compatible(runs, allow_mixed=False)
    _, fig = _frontier_fig(runs)
    assert fig.axes[0].get_xlabel() == "Latency p50 per request, batch 1 (s)  ← better"
    assert _label_texts(fig) == {"base": "base (baseline)", "int8": "int8", "nf4": "nf4"}


def test_allow_mixed_labels_the_difference(results, tmp_path):
    from vlmslim.figures.runs import check_compatible

    data_dir = Path(load_run(results[0]).data_dir)
    base = write_run(tmp_path / "r", "base", data_dir, protocol={"batch_size": 8})
    runs = load_runs([base, *(results[list(RUNS).index(n)] for n in _OTHERS)])
    with pytest.raises(FiguresError, match=re.escape("runs differ in batch_size (8: base vs 1: glu30, nf4)")):
        check_compatible(runs, allow_mixed=False)
    assert list(check_compatible(runs, allow_mixed=True)) == ["batch_size"]
    _, fig = _frontier_fig(runs)
    assert fig.axes[0].get_xlabel() == "Latency p50 per request, batch 1/8 (mixed) (s)  ← better"
    assert _label_texts(fig) == {"base": "base [batch 8] (baseline)", "glu30": "glu30 [batch 1]", "nf4": "nf4 [batch 1]"}

    out = tmp_path / "o"
    res = _invoke(base, *(results[list(RUNS).index(n)] for n in _OTHERS), "--out", out, "--allow-mixed", "--spotcheck", "0",
                  "--cost", "latency")
    assert res.exit_code == 0, res.output
    summary = (out / "summary.md").read_text()
    assert "mixed protocol: batch_size" in summary and "| **base [batch 8] (baseline)** |" in summary
    assert "| **glu30 [batch 1]** |" in summary
    assert "WARNING vlmslim.figures.runs: plotting runs that differ in batch_size" in res.stderr


# ---------------------------------------------------------------------------------------------------
# Energy, label placement and metric names (issue 12, item 16).

_CPU_ENERGY = {"basis": "cpu+ram (estimated)", "gpu_wh": None, "cpu_method": "estimated (cpu_load)"}


def _with_energy(name, data_dir, wh, basis=_CPU_ENERGY):
    efficiency = _summary(name, data_dir)["efficiency"] | {"energy_wh_per_sample": wh, "energy": basis}
    return {"efficiency": efficiency}


def test_energy_axis_in_mwh_and_labelled_as_cpu_estimate(results, tmp_path):
    data_dir = Path(load_run(results[0]).data_dir)
    wh = {"base": 5.58e-05, "glu30": 5.29e-05, "nf4": 7.56e-05}  # the demo's CPU numbers
    dirs = [write_run(tmp_path / "r", n, data_dir, **_with_energy(n, data_dir, v)) for n, v in wh.items()]
    runs = load_runs(dirs)
    assert [r.energy_basis for r in runs] == ["CPU estimate"] * 3
    af, fig = _frontier_fig(runs, axis="energy")
    assert fig.axes[0].get_xlabel() == "Energy per sample, batch 1 (mWh, CPU estimate)  ← better"
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert ticks and not any("e" in t for t in ticks), ticks  # 0.055, not 5.5e-05
    assert all(0.04 <= float(t) <= 0.09 for t in ticks), ticks
    assert [p.cost for p in af.points] == pytest.approx([0.0558, 0.0529, 0.0756])

    out = tmp_path / "o"
    assert _invoke(*dirs, "--out", out, "--cost", "energy", "--spotcheck", "0").exit_code == 0
    axis = json.loads((out / "frontier.json").read_text())["axes"]["energy"]
    assert (axis["unit"], axis["title"], axis["scale"]) == ("mWh", "Energy per sample, batch 1 (mWh, CPU estimate)", 1000)
    assert axis["frontier"][0] == {"run": "glu30", "quality": 0.98, "cost": pytest.approx(0.0529), "results_dir": str(dirs[1])}
    text = (out / "summary.md").read_text()
    assert "Energy per sample, batch 1 (mWh, CPU estimate)" in text and "| 0.0558 |" in text


def test_gpu_energy_is_labelled_measured(results, tmp_path):
    data_dir = Path(load_run(results[0]).data_dir)
    gpu = {"basis": "gpu (measured)", "gpu_wh": 1.0}
    dirs = [write_run(tmp_path / "r", n, data_dir, **_with_energy(n, data_dir, v, gpu)) for n, v in (("base", 0.041), ("nf4", 0.05))]
    _, fig = _frontier_fig(load_runs(dirs), axis="energy")
    assert fig.axes[0].get_xlabel() == "Energy per sample, batch 1 (mWh, GPU measured)  ← better"


# The demo's numbers (docs/demo/summary.md, CPU, n=100): six runs within 0.15 s at CIDEr 7.0, three near 0.
# name: precision, pruning, cider, ci, latency s, size MB
DEMO = {
    "base": ("32-bit", [], 7.003, (6.943, 7.054), 0.216, 15.632),
    "glu30": ("32-bit", [{"kind": "glu", "ratio": 0.3}], 7.003, (6.943, 7.054), 0.200, 12.487),
    "glu50": ("32-bit", [{"kind": "glu", "ratio": 0.5}], 6.986, (6.908, 7.039), 0.168, 10.914),
    "glu70": ("32-bit", [{"kind": "glu", "ratio": 0.7}], 6.942, (6.835, 7.020), 0.156, 9.341),
    "glu80": ("32-bit", [{"kind": "glu", "ratio": 0.8}], 3.816, (3.415, 4.153), 0.182, 7.768),
    "heads25": ("32-bit", [{"kind": "heads", "ratio": 0.25}], 0.0961, (0.0364, 0.168), 0.329, 14.846),
    "heads50": ("32-bit", [{"kind": "heads", "ratio": 0.5}], 2.84e-08, (1.48e-08, 4.47e-08), 0.300, 14.060),
    "glu30-heads25": ("32-bit", [{"kind": "glu", "ratio": 0.3}, {"kind": "heads", "ratio": 0.25}], 0.169,
                      (0.0622, 0.282), 0.299, 11.700),
    "drop1": ("32-bit", [{"kind": "layers", "n": 1}], 4.397, (3.970, 4.742), 0.191, 12.485),
    "int8": ("int8", [], 7.003, (6.943, 7.054), 0.526, 6.236),
    "nf4": ("nf4", [], 7.003, (6.943, 7.054), 0.307, 4.821),
    "glu30-nf4": ("nf4", [{"kind": "glu", "ratio": 0.3}], 7.003, (6.943, 7.054), 0.265, 4.378),
}


@pytest.fixture(scope="module")
def demo_runs(results, tmp_path_factory):
    from vlmslim.figures.runs import Run

    base = load_run(results[0])
    runs = []
    for name, (precision, pruning, cider, ci, latency, size) in DEMO.items():
        runs.append(Run(dir=Path(name), name=name, precision=precision, pruning=pruning, is_baseline=name == "base",
                        task="caption", n_samples=100, metrics={"cider": cider}, ci={"cider": ci},
                        efficiency={"latency_s_p50": latency, "model_size_mb": size}, summary=base.summary))
    return runs


def _marker_px(fig, point) -> float:
    """Marker radius in pixels: sqrt(s)/2 points for scatter size s (58; the star 260)."""
    return (260 if point.is_baseline else 58) ** 0.5 / 2 * fig.dpi / 72


def _assert_labels_clear(fig, ax, points, gap_px=5.0):
    """Every point labelled once; label boxes (text extents from the renderer) do not overlap each other
    and keep `gap_px` apart (so two names never read as one), cover no marker, stay inside the axes; a
    label not clearly (4 px) nearer its own marker's edge than any other's has a visible leader line
    (at least 5 px between box and marker) to its own."""
    from matplotlib.text import Text

    fig.canvas.draw()  # annotations take their final offset positions only when drawn
    renderer = fig.canvas.get_renderer()
    labels = {t.get_gid()[len("label:"):]: t for t in ax.texts if (t.get_gid() or "").startswith("label:")}
    assert set(labels) == {p.name for p in points}
    boxes = {name: Text.get_window_extent(t, renderer) for name, t in labels.items()}
    names = sorted(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            A, B = boxes[a].padded(gap_px / 2), boxes[b].padded(gap_px / 2)
            assert not A.overlaps(B), f"labels {a!r} and {b!r} collide: {boxes[a]} {boxes[b]}"
    axes_box = ax.get_window_extent(renderer)
    centers = {p.name: ax.transData.transform((p.cost, p.quality)) for p in points}
    for p in points:
        x, y = centers[p.name]
        r = _marker_px(fig, p)
        for name, box in boxes.items():
            # strict overlap: a box may touch a marker's bounding square, not cover it
            covered = box.x0 < x + r and box.x1 > x - r and box.y0 < y + r and box.y1 > y - r
            assert not covered, f"label {name!r} covers the marker of {p.name!r}"
    for name, box in boxes.items():
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1, name
        radius = {p.name: _marker_px(fig, p) for p in points}
        gap = {n: ((min(max(c[0], box.x0), box.x1) - c[0]) ** 2 + (min(max(c[1], box.y0), box.y1) - c[1]) ** 2) ** 0.5
               - radius[n] for n, c in centers.items()}
        rival = min((n for n in gap if n != name), key=gap.get, default=None)
        if rival is not None and gap[rival] < gap[name] + 4:
            assert labels[name].arrow_patch is not None, f"label {name!r} reads as {rival!r}'s: no leader line"
            assert gap[name] >= 5, f"label {name!r}'s leader line is hidden ({gap[name]:.1f} px)"


@pytest.mark.parametrize("axis", ["latency", "size"])
def test_demo_frontier_labels_do_not_collide(demo_runs, axis):
    af, fig = _frontier_fig(demo_runs, axis=axis)
    _assert_labels_clear(fig, fig.axes[0], af.points)


def test_example_figure_labels_do_not_collide(tmp_path):
    spec = importlib.util.spec_from_file_location("make_example_figures", REPO / "docs/examples/make_example_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runs = load_runs(module.write_results(tmp_path, n_rows=2))
    for axis in ("latency", "vram", "size", "energy"):
        af, fig = _frontier_fig(runs, axis=axis)
        _assert_labels_clear(fig, fig.axes[0], af.points)


def test_combined_panels_labels_do_not_collide(demo_runs):
    from vlmslim.figures.analysis import compute_frontier
    from vlmslim.figures.combined import combined_figure

    baseline = choose_baseline(demo_runs)
    frontiers = [compute_frontier(demo_runs, "cider", a, baseline) for a in ("latency", "size")]
    fig = combined_figure(frontiers, demo_runs, ["cider"], baseline, "cider", "ctx")
    for ax, af in zip(fig.axes, frontiers):
        _assert_labels_clear(fig, ax, af.points)


def test_metric_display_names_and_one_rouge_l(results, tmp_path):
    """rouge_l (pycocoevalcap) and rougeL_f (rouge-score) are both ROUGE-L: figures show one, by name."""
    from vlmslim.figures.combined import combined_figure
    from vlmslim.figures.style import METRIC_LABELS

    data_dir = Path(load_run(results[0]).data_dir)
    dirs = []
    for i, name in enumerate(("base", "glu30", "nf4")):
        metrics = _summary(name, data_dir)["metrics"] | {"rouge_l": 0.5 - 0.01 * i, "rougeL_f": 0.49 - 0.01 * i,
                                                         "rouge1": 0.52, "caption_len_mean": 9.1}
        dirs.append(write_run(tmp_path / "r", name, data_dir, metrics=metrics))
    runs = load_runs(dirs)
    baseline = choose_baseline(runs)
    from vlmslim.figures.analysis import compute_frontier, figure_metrics

    metrics = figure_metrics(runs)
    assert metrics == ["cider", "bleu4", "meteor", "rouge_l", "rouge1"]
    fig = combined_figure([compute_frontier(runs, "cider", "latency", baseline)], runs, metrics, baseline, "cider", "ctx")
    columns = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    assert columns == ["CIDEr-D", "BLEU-4", "METEOR", "ROUGE-L", "ROUGE-1"]
    assert set(columns) <= set(METRIC_LABELS.values()) and len(set(columns)) == len(columns)

    out = tmp_path / "o"
    assert _invoke(*dirs, "--out", out, "--cost", "latency", "--spotcheck", "0").exit_code == 0
    assert not (out / "bars_rougeL_f.png").exists() and (out / "bars_rouge_l.png").is_file()
    header = next(line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| Run"))
    assert "rougeL_f" not in header and "ROUGE-L (rouge-score)" in header  # the table keeps every number


# ---------------------------------------------------------------------------------------------------
# Pruned → recovered arrows (issue 14, item 5).


def _prune_step(glu=0.0, heads=0.0, seconds=12.0):
    """A prune step as `vlmslim prune` records it: the options in `params`, outcomes and timings beside them."""
    params = {"glu": glu, "heads": heads, "head_mode": "groups", "drop_layers": 0, "trim_vision": False,
              "importance": "maw", "head_importance": "o_norm", "round_to": 64, "calibration": None,
              "calibration_samples": None, "seed": 0, "allocation": "uniform", "max_layer_ratio": 0.9, "teacher_tokens": 32}
    method = "+".join(k for k, r in (("glu", glu), ("heads", heads)) if r)
    return {"kind": "prune", "method": method, "params": params, "criterion": {"neurons": "maw", "heads": None},
            "calibration": None, "kept": {"mlp": {"len": 32, "sha256": f"{seconds:064.0f}"}, "attention": None},
            "stock_loadable": False, "params_before": {"language": 7_000}, "params_after": {"language": 5_000},
            "seconds": seconds}


_RECOVER = {"kind": "recover", "method": "kd", "params": {"steps": 60, "batch_size": 16, "lr": 1e-3},
            "teacher": {"source": "base", "path": "ckpt/base", "model_sha256": "e" * 64}, "seconds": 56.2}
_POOL144 = {"image_tokens": 144, "method": "pool", "seed": 0}
# name: precision, pruning, cider, latency s, size MB, token reduction. The recovered runs were pruned
# again (other seconds and kept-index hashes) with the same options as their twins.
RECOVERY = {
    "base": ("16-bit", [], 1.10, 0.60, 13500, None),
    "glu50": ("16-bit", [_prune_step(glu=0.5)], 0.70, 0.45, 9000, None),
    "glu50-kd": ("16-bit", [_prune_step(glu=0.5, seconds=13.7), _RECOVER], 0.95, 0.46, 9000, None),
    "glu30": ("16-bit", [_prune_step(glu=0.3)], 0.90, 0.50, 10600, None),
    "glu50-nf4": ("nf4", [_prune_step(glu=0.5)], 0.66, 0.52, 2600, None),
    "glu50-nf4-kd": ("nf4", [_prune_step(glu=0.5, seconds=14.1), _RECOVER], 0.93, 0.53, 2600, None),
    "glu50-t144-kd": ("16-bit", [_prune_step(glu=0.5), _RECOVER], 0.85, 0.36, 9000, _POOL144),  # no t144 twin
    "heads25-kd": ("16-bit", [_prune_step(heads=0.25), _RECOVER], 0.80, 0.57, 12100, None),  # no heads25 run
}
EXPECTED_PAIRS = {"glu50-kd": "glu50", "glu50-nf4-kd": "glu50-nf4"}


@pytest.fixture(scope="module")
def recovery_runs(results, tmp_path_factory):
    root = tmp_path_factory.mktemp("recovery")
    data_dir = Path(load_run(results[0]).data_dir)
    dirs = []
    for name, (precision, pruning, cider, latency, size, tokens) in RECOVERY.items():
        summary = _summary("glu30", data_dir)
        summary["model"] = {"name": name, "path": f"ckpt/{name}", "family": "llava", "precision": precision,
                            "pruning": pruning, "token_reduction": tokens, "is_baseline": name == "base"}
        summary["metrics"] = {"cider": cider}
        summary["ci"] = {"cider": [cider - 0.04, cider + 0.04]}
        summary["efficiency"] |= {"latency_s_p50": latency, "model_size_mb": size, "peak_vram_mb": size + 1500}
        (root / name).mkdir()
        (root / name / "summary.json").write_text(json.dumps(summary))
        dirs.append(root / name)
    return load_runs(dirs)


def test_recovery_pairs(recovery_runs):
    from vlmslim.figures.pairs import recovery_pairs, step_identity

    # Other precision (glu50-nf4-kd vs glu50), other token budget (t144) or no pruned twin (heads25): no pair.
    assert recovery_pairs(recovery_runs) == EXPECTED_PAIRS
    assert recovery_pairs(list(reversed(recovery_runs))) == EXPECTED_PAIRS
    by_name = {r.name: r for r in recovery_runs}
    assert recovery_pairs([by_name["glu50-kd"], by_name["glu30"], by_name["base"]]) == {}  # twin not plotted
    # The same prune benchmarked twice: the first name wins, whatever the order given.
    again = copy.deepcopy(by_name["glu50"])
    again.name = "glu50 (rerun)"
    for runs in ([by_name["glu50-kd"], again, by_name["glu50"]], [by_name["glu50"], by_name["glu50-kd"], again]):
        assert recovery_pairs(runs) == {"glu50-kd": "glu50"}
    # Records without params (hand-written summaries) compare whole.
    assert step_identity({"kind": "glu", "ratio": 0.3}) != step_identity({"kind": "glu", "ratio": 0.5})
    assert by_name["glu50-kd"].pruning_method == "recovered"
    assert by_name["glu50-kd"].pruning_text == "glu 50% (maw) + recover (kd)"


@pytest.mark.parametrize("axis", ["latency", "size"])
def test_recovery_arrows_go_from_pruned_to_recovered(recovery_runs, axis):
    af, fig = _frontier_fig(recovery_runs, axis=axis)
    ax = fig.axes[0]
    arrows = {t.get_gid(): t for t in ax.texts if (t.get_gid() or "").startswith("recovery:")}
    assert set(arrows) == {f"recovery:{p}->{r}" for r, p in EXPECTED_PAIRS.items()}
    points = {p.name: p for p in af.points}
    for recovered, pruned in EXPECTED_PAIRS.items():
        arrow = arrows[f"recovery:{pruned}->{recovered}"]
        assert arrow.xyann == pytest.approx((points[pruned].cost, points[pruned].quality))  # tail at P
        assert arrow.xy == pytest.approx((points[recovered].cost, points[recovered].quality))  # head at R
        assert 2 < arrow.get_zorder() < 4  # drawn (with its arrow patch) over the CI bars, under the markers
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "recovered (vlmslim recover)" in legend and "pruned → recovered" in legend
    _assert_labels_clear(fig, ax, af.points)


def test_recovery_arrows_in_combined_panels(recovery_runs):
    from vlmslim.figures.analysis import compute_frontier
    from vlmslim.figures.combined import combined_figure

    baseline = choose_baseline(recovery_runs)
    frontiers = [compute_frontier(recovery_runs, "cider", a, baseline) for a in ("latency", "size")]
    fig = combined_figure(frontiers, recovery_runs, ["cider"], baseline, "cider", "ctx")
    for ax, af in zip(fig.axes, frontiers):
        assert sum((t.get_gid() or "").startswith("recovery:") for t in ax.texts) == len(EXPECTED_PAIRS)
        _assert_labels_clear(fig, ax, af.points)


def test_compiled_runs_with_and_without_fused_projections_are_refused(results, tmp_path):
    """The compiled engine fuses q|k|v and gate|up since it was measured faster (docs/performance.md): a run
    from before (no `fuse` recorded) and a fused one differ in speed, so they are not drawn as one protocol."""
    data_dir = Path(load_run(results[0]).data_dir)
    old = write_run(tmp_path / "r", "base", data_dir, engine="compiled")  # recorded before fusion existed
    new = write_run(tmp_path / "r", "glu30", data_dir, engine="compiled", protocol={"fuse": True})
    res = _invoke(old, new, "--out", tmp_path / "o")
    assert res.exit_code == 1 and res.output.startswith("Error: runs differ in fuse (False: base vs True: glu30)")
    assert not (tmp_path / "o").exists()
    again = write_run(tmp_path / "r2", "base", data_dir, engine="compiled", protocol={"fuse": True})
    res = _invoke(again, new, "--out", tmp_path / "o2", "--cost", "size", "--spotcheck", "0")
    assert res.exit_code == 0, res.output


@pytest.mark.slow  # the fused-projection twin above runs the same refusal path by default
def test_compiled_runs_with_split_and_sdpa_attention_are_refused(results, tmp_path):
    """Split-K decode attention is the compiled engine's default on CUDA since it was measured faster
    (docs/performance.md): a compiled run from before (no `attention` recorded: SDPA) and a split one differ in
    speed, so they are not drawn as one protocol; eager runs carry no attention key."""
    data_dir = Path(load_run(results[0]).data_dir)
    old = write_run(tmp_path / "r", "base", data_dir, engine="compiled", protocol={"fuse": True})
    new = write_run(tmp_path / "r", "glu30", data_dir, engine="compiled", protocol={"fuse": True, "attention": "split"})
    res = _invoke(old, new, "--out", tmp_path / "o")
    assert res.exit_code == 1 and res.output.startswith("Error: runs differ in attention (sdpa: base vs split: glu30)")
    assert not (tmp_path / "o").exists()
    again = write_run(tmp_path / "r2", "base", data_dir, engine="compiled", protocol={"fuse": True, "attention": "split"})
    res = _invoke(again, new, "--out", tmp_path / "o2", "--cost", "size", "--spotcheck", "0")
    assert res.exit_code == 0, res.output
