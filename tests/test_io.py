"""vlmslim.io: atomic output dirs — one writer per output (lock), no-clobber swap, stale partials cleaned."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import SafetensorError

from vlmslim.errors import OutputBusyError, OutputExistsError, OutputWriteError
from vlmslim.io import atomic_dir, output_lock

HOLD = ("import sys, time\nfrom vlmslim.io import output_lock\n"
        "with output_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/out (what a running prune or bench does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id now (until the kernel reuses it)


def test_second_writer_refused_naming_the_holder(tmp_path, holder):
    with pytest.raises(OutputBusyError, match=f"PID {holder.pid}") as e:
        with atomic_dir(tmp_path / "out"):
            pytest.fail("entered the block while another process holds the output")
    assert "\n" not in str(e.value) and "--out" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock"]  # the holder's; no staging dir made
    # In one process too: the lock is per open file, not per process.
    holder.kill()
    holder.wait()
    with output_lock(tmp_path / "x"):
        with pytest.raises(OutputBusyError, match=f"PID {os.getpid()}"):
            with output_lock(tmp_path / "x"):
                pass
    assert not (tmp_path / ".x.lock").exists()  # released and removed


def test_lock_released_when_the_holder_dies(tmp_path, holder):
    holder.kill()
    holder.wait()
    assert (tmp_path / ".out.lock").exists()  # a kill -9 leaves the file; its lock went with the process
    with atomic_dir(tmp_path / "out") as staging:
        (staging / "f").write_text("new")
    assert (tmp_path / "out" / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_that_appeared_meanwhile_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="appeared"):
        with atomic_dir(out) as staging:
            (staging / "f").write_text("mine")
            out.mkdir()  # another writer (one that took no lock) finished first
            (out / "f").write_text("theirs")
    assert (out / "f").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # our staging dir removed
    with atomic_dir(out, overwrite=True) as staging:  # --overwrite replaces, as asked
        (staging / "f").write_text("mine")
    assert (out / "f").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_partials_of_dead_processes_are_cleaned(tmp_path):
    pid = dead_pid()
    for name in (f"out.partial-{pid}", f"out.partial-{pid}.partial-{pid}", f"out.old-{pid}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    (tmp_path / "out").mkdir()
    alive = tmp_path / f"out.partial-{os.getppid()}"  # a live process's: left alone
    alive.mkdir()
    (tmp_path / "other.partial-1").mkdir()  # another output's: not ours to judge
    with atomic_dir(tmp_path / "out", overwrite=True) as staging:
        (staging / "f").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", alive.name, "other.partial-1"])


def test_killed_swap_restores_the_old_output(tmp_path):
    # Killed between moving the old output aside and renaming the new one in: the old one comes back.
    pid = dead_pid()
    (tmp_path / f"out.old-{pid}").mkdir()
    (tmp_path / f"out.old-{pid}" / "f").write_text("old")
    (tmp_path / f"out.partial-{pid}").mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_dir(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_nested_atomic_dir_writes_into_the_staging_dir(tmp_path):
    # A step's save inside its own atomic_dir: no second layer, so no `.partial-PID.partial-PID` name.
    with atomic_dir(tmp_path / "out") as staging:
        with atomic_dir(staging, overwrite=True) as inner:
            assert inner == staging
            (inner / "f").write_text("x")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".out.lock", staging.name])
    assert (tmp_path / "out" / "f").read_text() == "x"


def test_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as staging:
            (staging / "f").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_prune_step_saves_into_its_own_staging_dir(tmp_path, monkeypatch):
    """The prune step's save_checkpoint runs inside the step's atomic_dir: one staging layer, so a kill
    mid-save leaves `glu.partial-PID` (cleaned next run), never `glu.partial-PID.partial-PID`."""
    import vlmslim.checkpoint as checkpoint
    from vlmslim.manifest import new_manifest
    from vlmslim.pruning import PruneConfig, prune_checkpoint
    from vlmslim.testing import tiny_model

    model, processor = tiny_model("llava")
    base = checkpoint.save_checkpoint(model, processor, tmp_path / "base", new_manifest("t", model.config))
    written_in = []
    real_dir_size = checkpoint.dir_size
    monkeypatch.setattr(checkpoint, "dir_size", lambda p: written_in.append(Path(p).name) or real_dir_size(p))
    prune_checkpoint(base, tmp_path / "glu", PruneConfig(glu=0.5, round_to=1))
    assert written_in == [f"glu.partial-{os.getpid()}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "glu"]


def test_busy_output_refused_before_any_work(tmp_path, holder):
    from vlmslim.io import check_output_dir

    with pytest.raises(OutputBusyError, match=f"PID {holder.pid}"):
        check_output_dir(tmp_path / "out", overwrite=False)  # what prune/quantize call before loading a model
    holder.kill()
    holder.wait()
    assert check_output_dir(tmp_path / "out", overwrite=False) == tmp_path / "out"


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   SafetensorError("Error while serializing: I/O error: No space left on device "
                                                   "(os error 28)")])
def test_full_disk_is_one_error_and_leaves_nothing(tmp_path, error):
    with pytest.raises(OutputWriteError, match="No space left on device; free space") as e:
        with atomic_dir(tmp_path / "out") as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            raise error
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match="not a write"):  # other errors pass through unchanged
        with atomic_dir(tmp_path / "out"):
            raise OSError(errno.EIO, "not a write failure")
