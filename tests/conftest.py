"""Offline test kit: no test touches the network; tiny models come from `vlmslim.testing`."""

import os

# Set before transformers/huggingface_hub are imported anywhere in the session.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from vlmslim.testing import TINY_MODELS, tiny_model  # noqa: E402


@pytest.fixture(params=sorted(TINY_MODELS))
def any_family(request):
    """(family name, model, processor) for every registered tiny family."""
    model, processor = tiny_model(request.param)
    return request.param, model, processor


@pytest.fixture
def llava():
    return tiny_model("llava")
