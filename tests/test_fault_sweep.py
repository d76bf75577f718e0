"""A reduced fault sweep (studies/fault_sweep.py): real processes killed, paused and raced on the demo model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REDUCED = ("kill-prune-KILL", "kill-quantize-TERM", "race-prune-paused")  # no bench: no Java scoring


@pytest.mark.slow
def test_reduced_fault_sweep_is_clean(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-m", "studies.fault_sweep", "--work", str(tmp_path), "--only",
                        ",".join(REDUCED)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "**3 tried / 3 clean**" in r.stdout
    table = [line for line in r.stdout.splitlines() if line.startswith("| ") and line.endswith("| yes |")]
    assert len(table) == 3, r.stdout
    # The kill left a partial dir (or a stale lock) that the re-run removed: the scenario was really hit.
    assert "kill -KILL mid-prune | exit -9, " in r.stdout and "kill -TERM mid-quantize | exit -15, " in r.stdout
    assert r.stdout.count("re-run exit 0: complete, nothing left") == 2
    assert "PID " in r.stdout  # the paused prune's holder named in the second one's error
