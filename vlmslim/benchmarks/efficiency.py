"""Efficiency measurements: latency statistics, peak memory, energy, and the decode roofline.

Everything here is computed from what `run.py` recorded (per-sample rows, one record per session),
so a resumed run reports over all of its rows. Absent measurements are None, never 0: a CPU run has
no VRAM, a GPU run whose tracker read 0 J has no energy figure.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time

import numpy as np
import torch

logger = logging.getLogger(__name__)

MB = 1e6


def stats(values) -> dict[str, float | None]:
    """p50 / p90 (linear interpolation, numpy's default) and mean; Nones for no values."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"p50": None, "p90": None, "mean": None}
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)), "mean": float(v.mean())}


# ---------------------------------------------------------------- memory


def reset_peak_memory(devices: list[torch.device]) -> None:
    for d in devices:
        torch.cuda.reset_peak_memory_stats(d)


def peak_memory_mb(devices: list[torch.device]) -> tuple[float | None, float | None]:
    """(peak allocated, peak reserved) in MB summed over the model's GPUs since the last reset; None on CPU."""
    if not devices:
        return None, None
    alloc = sum(torch.cuda.max_memory_allocated(d) for d in devices)
    reserved = sum(torch.cuda.max_memory_reserved(d) for d in devices)
    return alloc / MB, reserved / MB


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started (cannot be reset; includes model loading)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MB if sys.platform == "darwin" else rss * 1024 / MB  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------- roofline


def measure_bandwidth_gb_s(device: torch.device, max_bytes: int = 1 << 30, iters: int = 10) -> float:
    """Device memory bandwidth from a large device-to-device copy (each byte read once and written once)."""
    # The events must be recorded on the stream the copies run on: that of `device`, made current here.
    with torch.cuda.device(device):
        free, _ = torch.cuda.mem_get_info(device)
        n = int(min(max_bytes, free // 4)) // 4  # two fp32 buffers, leaving room for the run itself
        src = torch.empty(n, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        for _ in range(2):
            dst.copy_(src)  # warm-up: first touch, clock ramp
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            dst.copy_(src)
        end.record()
        torch.cuda.synchronize(device)
        seconds = start.elapsed_time(end) / 1000
        del src, dst
        torch.cuda.empty_cache()
    return 2 * n * 4 * iters / seconds / 1e9


def decode_weight_bytes(census: dict) -> int:
    """Bytes a decoding step must read at least once: the language decoder and lm_head (the vision tower
    and projector run only in prefill)."""
    comps = census["components"]
    return sum(comps[c]["bytes"] for c in ("language", "lm_head") if c in comps)


def roofline(weight_bytes: int, bandwidth_gb_s: float | None, decode_ms_per_token: float | None) -> dict:
    """Bandwidth floor of one decode step vs the measured step: 1.0 = weight-streaming bound."""
    if not bandwidth_gb_s or not decode_ms_per_token:
        return {"memory_bandwidth_gb_s": bandwidth_gb_s, "decode_floor_ms_per_token": None, "roofline_fraction": None}
    floor_ms = weight_bytes / (bandwidth_gb_s * 1e9) * 1000
    return {"memory_bandwidth_gb_s": bandwidth_gb_s, "decode_floor_ms_per_token": floor_ms,
            "roofline_fraction": floor_ms / decode_ms_per_token}


# ---------------------------------------------------------------- energy

# codecarbon's CPU modes: RAPL / powermetrics read counters; the others multiply a TDP by the load.
_MEASURED_CPU_MODES = {"intel_rapl", "intel_power_gadget", "apple_powermetrics"}


class EnergyMeter:
    """codecarbon's offline tracker over the measured pass; `stop()` returns Wh by component."""

    def __init__(self, country: str, devices: list[torch.device]):
        from codecarbon import OfflineEmissionsTracker  # slow import; only when energy is on

        # codecarbon resets its logger to INFO on import and logs before applying log_level="error".
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        # tracking_mode="process": CPU/RAM attributed to this process, not to everything on a shared host.
        self.tracker = OfflineEmissionsTracker(country_iso_code=country, log_level="error", save_to_file=False,
                                               tracking_mode="process", gpu_ids=nvml_gpu_ids(devices) or None,
                                               measure_power_secs=5)
        self.country = country
        self.on_gpu = bool(devices)

    def start(self) -> None:
        self.tracker.start()
        self.t0 = time.perf_counter()

    def stop(self) -> dict:
        self.tracker.stop()
        d = self.tracker.final_emissions_data
        cpu_mode = next((getattr(h, "_mode", None) for h in self.tracker._hardware  # noqa: SLF001
                         if type(h).__name__ == "CPU"), None)  # codecarbon exposes the mode nowhere else
        kwh_to_wh = 1000.0
        gpu_wh = d.gpu_energy * kwh_to_wh
        out = {
            "gpu_wh": gpu_wh if self.on_gpu and gpu_wh > 0 else None,
            "gpu_method": "measured (NVML)" if self.on_gpu else None,
            "cpu_wh": d.cpu_energy * kwh_to_wh,
            "cpu_method": ("measured" if cpu_mode in _MEASURED_CPU_MODES else "estimated") + f" ({cpu_mode})",
            "ram_wh": d.ram_energy * kwh_to_wh,
            "ram_method": "estimated",
            "duration_s": time.perf_counter() - self.t0,
            "country": self.country,
            "gpu_model": d.gpu_model or None,
            "cpu_model": d.cpu_model,
            "codecarbon_version": d.codecarbon_version,
            "note": None,
        }
        if self.on_gpu and gpu_wh <= 0:
            out["note"] = "codecarbon read 0 GPU energy (NVML power counters unavailable?): GPU energy not reported"
            logger.warning(out["note"])
        return out


def nvml_gpu_ids(devices: list[torch.device]) -> list[int | str]:
    """codecarbon selects GPUs by NVML index or UUID, not by the CUDA index this process sees: map
    through CUDA_VISIBLE_DEVICES (assumes CUDA_DEVICE_ORDER=PCI_BUS_ID-like ordering, as on our nodes)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return [d.index for d in devices]
    return [int(v) if v.isdigit() else v for v in (visible[d.index] for d in devices)]


def energy_summary(sessions: list[dict]) -> tuple[float | None, dict]:
    """(Wh per sample, detail). On GPU the headline is the measured GPU energy alone; on CPU it is the
    CPU + RAM estimate. Sessions without energy (--no-energy, killed before stop) are left out."""
    with_energy = [s for s in sessions if s.get("energy") and s.get("n_generated")]
    if not with_energy:
        return None, {"note": "energy not measured"}
    n = sum(s["n_generated"] for s in with_energy)
    e = [s["energy"] for s in with_energy]
    on_gpu = any(x["gpu_method"] for x in e)

    def total(key):
        vals = [x[key] for x in e]
        return None if any(v is None for v in vals) else sum(vals)

    gpu, cpu, ram = total("gpu_wh"), total("cpu_wh"), total("ram_wh")
    detail = {
        "basis": "gpu (measured)" if on_gpu else "cpu+ram (estimated)",
        "gpu_wh": gpu, "cpu_wh": cpu, "ram_wh": ram,
        "gpu_wh_per_sample": None if gpu is None else gpu / n,
        "cpu_ram_wh_per_sample_estimated": None if cpu is None or ram is None else (cpu + ram) / n,
        "cpu_method": e[-1]["cpu_method"], "ram_method": e[-1]["ram_method"],
        "n_samples_measured": n, "country": e[-1]["country"],
        "notes": [x["note"] for x in e if x.get("note")],
    }
    headline = detail["gpu_wh_per_sample"] if on_gpu else detail["cpu_ram_wh_per_sample_estimated"]
    return headline, detail
