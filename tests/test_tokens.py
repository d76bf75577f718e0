"""Visual-token reduction: exact identity at K = N, exactly K tokens, left-padding invariance, both engines."""

from __future__ import annotations

import pytest
import torch

from vlmslim.benchmarks.engine import CompiledDecoder
from vlmslim.errors import BenchmarkError
from vlmslim.inputs import fixed_image, processor_inputs
from vlmslim.loading import load_model
from vlmslim.prompts import CAPTION_PROMPT
from vlmslim.testing import tiny_model
from vlmslim.tokens import REDUCERS, TokenSpec, reduce, reduce_placeholders, reducing
from vlmslim.tokens.reducers import contextual_count


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def _inputs(model, proc, prompts, seeds=None):
    images = [fixed_image(size=64, seed=s) for s in (seeds or range(len(prompts)))]
    return processor_inputs(model, proc, images, prompts)


def _reduced(model, proc, inputs, spec):
    n = model.config.vision_config.image_size // model.config.vision_config.patch_size
    return reduce_placeholders(inputs, model.config.image_token_id, n * n, spec.k,
                               proc.tokenizer.pad_token_id)


def test_reducers_keep_exactly_k_and_identity_at_n():
    x = torch.randn(2, 64, 8)
    cls = torch.rand(2, 64)
    for name in REDUCERS:
        assert torch.equal(reduce(name, x, 64, cls_attention=cls), x)  # K = N: untouched
        assert reduce(name, x, 16, cls_attention=cls).shape == (2, 16, 8)
    # pool of a 8x8 grid to 4x4: each output is the mean of a 2x2 block, in raster order
    p = reduce("pool", x, 16)
    assert torch.allclose(p[:, 0], x[:, [0, 1, 8, 9]].mean(1), atol=1e-6)
    assert torch.allclose(p[:, 5], x[:, [18, 19, 26, 27]].mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="perfect square"):
        reduce("pool", x, 20)
    # visionzip: the top-attended tokens are kept verbatim, in raster order, plus C merged ones
    v = reduce("visionzip", x, 16, cls_attention=cls)
    n_dom = 16 - contextual_count(16)
    top = cls[0].argsort(descending=True)[:n_dom].sort().values
    assert torch.equal(v[0, :n_dom], x[0, top])


def test_k_equal_to_full_count_reproduces_logits_exactly(demo):
    model, proc = demo
    inputs = _inputs(model, proc, [CAPTION_PROMPT])
    with torch.no_grad():
        ref = model(**inputs).logits
        spec = TokenSpec(64, "pool")
        with reducing(model, spec):
            got = model(**_reduced(model, proc, inputs, spec)).logits
    assert torch.equal(got, ref)


@pytest.mark.parametrize("method", ["pool", "visionzip", "random"])
def test_reduced_batch_is_left_padding_invariant_and_exactly_k(demo, method):
    model, proc = demo
    prompts = [CAPTION_PROMPT, "a red circle"]
    spec = TokenSpec(16, method)
    batch = _reduced(model, proc, _inputs(model, proc, prompts), spec)
    assert (batch["attention_mask"] == 0).any()  # really left-padded
    assert ((batch["input_ids"] == model.config.image_token_id).sum(1) == 16).all()
    with torch.no_grad(), reducing(model, spec):
        together = model.generate(**batch, max_new_tokens=8, do_sample=False)[:, batch["input_ids"].shape[1]:]
        for i, p in enumerate(prompts):
            alone_in = _reduced(model, proc, _inputs(model, proc, [p], seeds=[i]), spec)
            alone = model.generate(**alone_in, max_new_tokens=8, do_sample=False)[:, alone_in["input_ids"].shape[1]:]
            assert torch.equal(alone[0], together[i]), f"row {i} changed by batching"


@pytest.mark.parametrize("compile_step", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_compiled_engine_gives_eager_tokens_on_reduced_inputs(demo, compile_step):
    """The engine's static-cache decode (and, slow, its torch.compile'd step) on 16 VisionZip tokens."""
    model, proc = demo
    spec = TokenSpec(16, "visionzip")
    batch = _reduced(model, proc, _inputs(model, proc, [CAPTION_PROMPT, "a red circle"]), spec)
    with torch.no_grad(), reducing(model, spec):
        ref = model.generate(**batch, max_new_tokens=10, do_sample=False)[:, batch["input_ids"].shape[1]:]
        dec = CompiledDecoder(model, batch_size=2, max_cache_len=128, compile=compile_step)
        out = dec.decode(batch, 10, eos_token_id=None, ignore_eos=True)
    assert torch.equal(out.tokens, ref)


def test_refusals():
    with pytest.raises(ValueError, match="--image-tokens"):
        TokenSpec(0)
    with pytest.raises(ValueError, match="--token-method"):
        TokenSpec(16, "fastest")
    model, _ = tiny_model("idefics3")
    with pytest.raises(BenchmarkError, match="wired for llava only"):
        with reducing(model, TokenSpec(16)):
            pass


@pytest.mark.slow  # two real benches + figures (~15 s)
def test_bench_records_the_token_budget_and_refuses_mixing_it(tmp_path):
    from click.testing import CliRunner

    from vlmslim.cli import cli

    runner = CliRunner()
    data = tmp_path / "shapes"
    assert runner.invoke(cli, ["data", "synthetic", "--out", str(data), "--n", "3", "--seed", "7"]).exit_code == 0
    fast = ["--data", str(data), "--no-bertscore", "--no-energy", "--bootstrap", "10", "--max-new-tokens", "8",
            "--device", "cpu"]
    out = tmp_path / "r16"
    res = runner.invoke(cli, ["bench", "demo", "--out", str(out), "--image-tokens", "16", *fast])
    assert res.exit_code == 0, res.output
    import json

    s = json.loads((out / "summary.json").read_text())
    assert s["model"]["token_reduction"] == {"image_tokens": 16, "method": "pool", "seed": 0}
    assert s["model"]["is_baseline"] is False and s["protocol"]["image_tokens"] == 16
    res = runner.invoke(cli, ["bench", "demo", "--out", str(out), "--image-tokens", "4", *fast])
    assert res.exit_code == 1 and "image_tokens: 16 -> 4" in res.output  # one results dir, one token budget
    from vlmslim.figures import load_run

    run = load_run(str(out))
    assert run.pruning_method == "tokens" and "16 image tokens (pool)" in run.pruning_text
    base = tmp_path / "base"
    assert runner.invoke(cli, ["bench", "demo", "--out", str(base), *fast]).exit_code == 0
    res = runner.invoke(cli, ["figures", str(base), str(out), "--out", str(tmp_path / "figs"), "--cost", "ttft"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "figs" / "frontier_ttft.png").exists()
