"""Pruned → recovered pairs: which plotted run a `vlmslim recover` run was distilled from. Pure, no plotting.

The figures draw an arrow from each pruned run to its recovered twin, so a reader sees how much quality
the distillation bought back at (almost) the same cost.
"""

from __future__ import annotations

import json
from typing import Sequence

from vlmslim.figures.runs import Run

# What a manifest step *did*: the operation and its options. Everything else in a prune record (seconds,
# calibration statistics, kept indices, params_before/after) is an outcome or a timing, and two prunes
# with the same options made on different days must still compare equal.
STEP_IDENTITY_KEYS = ("kind", "method", "params")


def step_identity(step: dict) -> str:
    """A canonical text of one manifest step's kind, method and params (key order does not matter).

    Records without `params` (hand-written or older summaries, e.g. {"kind": "glu", "ratio": 0.3}) hold
    their options at the top level, so there the whole record is compared."""
    key = {k: step.get(k) for k in STEP_IDENTITY_KEYS} if "params" in step else step
    return json.dumps(key, sort_keys=True, default=str)


def recovery_pairs(runs: Sequence[Run]) -> dict[str, str]:
    """{recovered run name: pruned run name} among `runs` (the runs plotted on one figure).

    A run R whose `pruning` ends with a `recover` step pairs with the run P whose `pruning` equals R's
    without that last step (steps compared by `step_identity`), at the same precision and token
    reduction: P is the checkpoint R was distilled from, benchmarked the same way. When several runs
    match (the same prune benchmarked twice), P is the first by name, so the arrow does not depend on
    the order of the paths given. A recovered run with no such twin is left out (no arrow).
    """
    pairs = {}
    for r in runs:
        if not r.is_recovered:
            continue
        want = [step_identity(s) for s in r.pruning[:-1]]
        matches = sorted((p.name for p in runs if p is not r and p.precision == r.precision
                          and p.token_reduction == r.token_reduction
                          and [step_identity(s) for s in p.pruning] == want))
        if matches:
            pairs[r.name] = matches[0]
    return pairs
