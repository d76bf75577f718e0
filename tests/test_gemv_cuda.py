"""vlmslim.gemv_cuda: the int4 GEMV's bit arithmetic on the stored layout (CPU), the kernel itself on a GPU."""

import pytest
import torch

from vlmslim import gemv_cuda
from vlmslim.int4 import DEFAULT_KERNEL, Int4WeightOnlyLinear, unpack

_CUDA = pytest.mark.skipif(not gemv_cuda.available(torch.device("cuda")) or not torch.cuda.is_available(),
                           reason="needs a CUDA GPU and NVRTC")


def _layer(n: int, k: int, group: int, device="cpu") -> Int4WeightOnlyLinear:
    torch.manual_seed(n + k + group)
    lin = torch.nn.Linear(k, n, bias=False, device=device)
    return Int4WeightOnlyLinear.from_linear(lin, group)


def test_codes_become_one_plus_q_over_16_exactly():
    m = _layer(16, 256, 32)
    f = gemv_cuda.codes_as_floats(m.weight)
    assert f.shape == (16, 256)
    assert torch.equal(f, 1 + unpack(m.weight).float() / 16)


@pytest.mark.parametrize("k,group", [(256, 32), (384, 128), (512, 256)])
def test_reference_arithmetic_equals_the_dequantised_product(k, group):
    m = _layer(32, k, group)
    x = torch.randn(1, k).to(torch.bfloat16)
    pairs = gemv_cuda.interleave(m.scales, m.zeros)
    assert pairs.shape == (32, k // group) and pairs.dtype == torch.int32
    # scale in the low half, zero in the high half, both the stored bf16 bits
    assert torch.equal((pairs & 0xFFFF).to(torch.int16).view(torch.bfloat16), m.scales)
    want = x.float() @ m.dequantized().T
    got = gemv_cuda.reference(x, m.weight, pairs, group)
    assert got.shape == (1, 32)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_fits_and_cpu_refusal():
    assert gemv_cuda.fits(4096, 128) and gemv_cuda.fits(11008, 128)
    assert not gemv_cuda.fits(4096, 16) and not gemv_cuda.fits(4224, 96)  # part chunks; 3 chunks a group
    m = _layer(16, 256, 128)
    x = torch.randn(1, 256)
    before = m(x)
    with pytest.raises(RuntimeError, match="int4wo kernel .cuda. needs a CUDA GPU"):
        m.set_kernel("cuda")
    assert m.kernel == DEFAULT_KERNEL and m._sz is None and torch.equal(m(x), before)


@_CUDA
@pytest.mark.parametrize("n,k,group", [(4096, 4096, 128), (11008, 4096, 128), (4096, 11008, 128), (112, 256, 32),
                                       (48, 1024, 64)])
def test_kernel_equals_reference_and_tinygemm(n, k, group):
    m = _layer(n, k, group, device="cuda")
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    tiny = m.set_kernel("tinygemm")(x).float()
    assert m.set_kernel("auto").decode_kernel == "cuda"  # where it runs, "auto" is this kernel
    m.set_kernel("cuda")
    got = m(x)
    assert got.dtype == torch.bfloat16 and got.shape == (1, n)
    ref = gemv_cuda.reference(x, m.weight, m._sz, group)
    # the kernel rounds its fp32 sum to bf16 once: within half a bf16 ulp plus fp32 summation order
    assert ((got.float() - ref).abs() <= ref.abs() * 2**-8 + 1e-4 * ref.abs().max()).all()
    assert (got.float() - tiny).norm() / tiny.norm() < 1e-2
    # more rows than one go to tinygemm
    x2 = torch.randn(3, k, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(m(x2), m.set_kernel("tinygemm")(x2))


@_CUDA
def test_every_launch_config_equals_the_reference():
    """The tuner may pick any config: each one, on a shape with a row tail and a part step."""
    m = _layer(200, 11008, 128, device="cuda")
    m.set_kernel("cuda")
    x = torch.randn(1, 11008, device="cuda", dtype=torch.bfloat16)
    ref = gemv_cuda.reference(x, m.weight, m._sz, 128)
    for cfg in gemv_cuda.CONFIGS:
        got = gemv_cuda._launch(cfg, x, m.weight, m._sz, 128).float()
        assert ((got - ref).abs() <= ref.abs() * 2**-8 + 1e-4 * ref.abs().max()).all(), cfg


def test_auto_kernel_is_tinygemm_where_the_cuda_kernel_cannot_run():
    m = _layer(16, 256, 128)
    x = torch.randn(1, 256)
    before = m(x)
    m.set_kernel("auto")
    assert m.kernel == "auto" and m.decode_kernel == "tinygemm" and m._sz is None
    assert torch.equal(m(x), before)
    assert _layer(16, 256, 128).decode_kernel == m.decode_kernel  # the default picks the same here
    m.prepare("cuda")  # what `_apply` does to a "cuda" module moved to a CPU: no pairs, so tinygemm decodes
    assert m.kernel == "cuda" and m.decode_kernel == "tinygemm" and torch.equal(m(x), before)


def test_the_shared_tuner_picks_the_fastest_that_runs_and_refuses_first_use_in_capture(monkeypatch):
    """`gemv.fastest` / `gemv.tuned` (behind the Triton GEMVs, the split attention and this kernel), with the
    CUDA-graph timer replaced by known times."""
    from vlmslim import gemv

    times = {"a": 3.0, "b": 1.0, "c": 2.0}

    def fake_time(calls):
        (cfg,) = calls
        if cfg == "broken":
            raise RuntimeError("too many registers")
        return times[cfg]

    monkeypatch.setattr(gemv, "graph_time_ms", fake_time)
    monkeypatch.setattr(gemv, "TUNED", {})  # this process's record stays clean
    best, timed = gemv.fastest(["a", "broken", "b", "c"], lambda cfg: [cfg], "test kernel")
    assert best == "b" and timed == times  # the failing config is skipped, not fatal
    # what bench records: the choice and every config's time that ran, in us
    assert gemv.TUNED["test kernel"] == {"config": "b", "us": 1000.0, "all_us": {"a": 3000.0, "b": 1000.0, "c": 2000.0}}
    with pytest.raises(RuntimeError, match="no launch config compiled and ran for test kernel"):
        gemv.fastest(["broken"], lambda cfg: [cfg], "test kernel")

    cache, tunes = {}, []
    tune = lambda: tunes.append(1) or "b"  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert gemv.tuned(cache, ("k",), tune, "test kernel") == "b"
    assert gemv.tuned(cache, ("k",), tune, "test kernel") == "b" and len(tunes) == 1  # tuned once per key
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert gemv.tuned(cache, ("k",), tune, "test kernel") == "b"  # known keys replay inside capture
    with pytest.raises(RuntimeError, match="test kernel reached for the first time inside CUDA-graph capture"):
        gemv.tuned(cache, ("new",), tune, "test kernel")
    assert ("new",) not in cache and len(tunes) == 1
