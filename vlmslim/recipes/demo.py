"""`vlmslim demo` = the shipped `demo.yaml` recipe on the embedded model; its options are overrides."""

from __future__ import annotations

import json
from pathlib import Path

from vlmslim.recipes import SHIPPED

DEMO_RECIPE = SHIPPED["demo"]


def demo_overrides(n: int | None = None, batch_size: int | None = None, bootstrap: int | None = None,
                   device: str | None = None, energy: bool = True) -> list[str]:
    """The demo's options as `--set` assignments (None: the recipe's value)."""
    given = {"data.synthetic.n": n, "bench.batch_size": batch_size, "bench.bootstrap": bootstrap, "device": device,
             "bench.energy": None if energy else "false"}
    return [f"{k}={v}" for k, v in given.items() if v is not None]


def summary_rows(results: dict[str, Path]) -> list[dict]:
    """One row per variant for the demo's table: CIDEr-D with its CI, BLEU-4, caption length, size, speed."""
    rows = []
    for name, res_dir in results.items():
        s = json.loads((Path(res_dir) / "summary.json").read_text())
        eff, m, ci = s["efficiency"], s["metrics"], s["ci"]
        rows.append({
            "name": name, "cider": m.get("cider"), "cider_ci": ci.get("cider"), "bleu4": m.get("bleu4"),
            "caption_len": m.get("caption_len_mean"), "params_m": (eff.get("params") or 0) / 1e6,
            "size_mb": eff.get("model_size_mb"), "latency_s_p50": eff.get("latency_s_p50"),
            "ttft_s_p50": eff.get("ttft_s_p50"), "decode_ms_per_token": eff.get("decode_ms_per_token"),
        })
    return rows
