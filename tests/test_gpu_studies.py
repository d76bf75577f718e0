"""The GPU studies' variant plumbing, run on the CPU with the demo's config: every study variant that can
run on a CPU builds and is measured (a GPU lease was once lost to a fused model the measurement could not
size). Kernels that need CUDA (fp8, Triton, gemlite, split attention) are covered by their own tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import studies.llava7b_gpu as study
from vlmslim.fusion import fused_groups
from vlmslim.int4 import Int4WeightOnlyLinear

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "vlmslim" / "demo" / "model" / "config.json"
# the default run builds the variant that goes through the most plumbing (int4, fusion, bf16, split attention,
# split K)
_SLOW = pytest.mark.slow  # ~1 s each; the full suite (CI) runs them all
CPU_VARIANTS = [pytest.param("base", marks=_SLOW), pytest.param("base-fused", marks=_SLOW),
                pytest.param("glu30-fused", marks=_SLOW), pytest.param("int4wo", marks=_SLOW),
                pytest.param("int4wo-fused", marks=_SLOW), pytest.param("base-fused-split", marks=_SLOW),
                pytest.param("int4wo-fused-bf16", marks=_SLOW), pytest.param("int4wo-fused-bf16-split", marks=_SLOW),
                "int4wo-fused-bf16-split-ks2"]


@pytest.mark.parametrize("name", CPU_VARIANTS)
def test_study_variant_builds_and_measures_on_the_demo_shape(monkeypatch, name):
    monkeypatch.setattr(study, "CONFIG", str(DEMO_CONFIG))
    monkeypatch.setattr(study, "DEVICE", "cpu")
    monkeypatch.setattr(study, "NEW_TOKENS", 4)
    model = study.build(name)
    variant = study.VARIANTS[name]
    assert (fused_groups(model) > 0) == variant.fused == ("-fused" in name)
    assert model.dtype == (torch.bfloat16 if "-bf16" in name else torch.float16)
    splits = {m.k_split for m in model.modules() if isinstance(m, Int4WeightOnlyLinear)}
    assert splits == ({2} if "-ks2" in name else {1} if "int4wo" in name else set())  # the demo's K allows 2
    rows = study.measure(model, 1, ["eager"], "inductor", bandwidth=1.0, variant=variant)
    (row,) = rows
    assert row["decode_ms_per_token"] > 0 and row["floor_ms_per_token"] > 0 and row["prompt_tokens"] > 16
    int4_layers = sum(isinstance(m, Int4WeightOnlyLinear) for m in model.modules())
    # on a CPU every int4 layer decodes on tinygemm, whatever the variant's kernel choice
    assert row["int4_decode_kernels"] == ({"tinygemm": int4_layers} if "int4wo" in name else None)
    if "glu30" in name:
        base = study.measure(study.build("base"), 1, ["eager"], "inductor", bandwidth=1.0,
                             variant=study.VARIANTS["base"])[0]
        assert row["params"] < base["params"]  # the GLU cut happened before the fusion


@pytest.mark.slow  # inductor compiles the demo's decode step on the CPU (~15 s)
def test_study_compiled_row_of_a_fused_int4_variant_decodes_the_eager_tokens(monkeypatch):
    monkeypatch.setattr(study, "CONFIG", str(DEMO_CONFIG))
    monkeypatch.setattr(study, "DEVICE", "cpu")
    monkeypatch.setattr(study, "NEW_TOKENS", 4)
    torch._dynamo.reset()
    model = study.build("int4wo-fused")
    eager, compiled = study.measure(model, 1, ["eager", "compiled"], "inductor",
                                    bandwidth=1.0, variant=study.VARIANTS["int4wo-fused"])
    assert compiled["fused_projections"] is True
    fused_int4 = sum(isinstance(m, Int4WeightOnlyLinear) for m in model.modules())  # q|k|v, o, gate|up, down
    assert compiled["int4_decode_kernels"] == eager["int4_decode_kernels"] == {"tinygemm": fused_int4}
    assert compiled["tokens_match_eager"] == compiled["tokens_compared"] == 4
    # the int4 step traced whole: one graph, no break (the user command's record: docs/performance.md)
    assert compiled["compile_stats"] == {"graphs": 1, "graph_breaks": 0, "cudagraph_skips": 0,
                                         "cudagraph_copied_inputs": 0}
    torch._dynamo.reset()
