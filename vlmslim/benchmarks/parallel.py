"""Data-parallel bench: N processes (accelerate's launcher, torch.distributed underneath) share the samples.

```
accelerate launch --multi_gpu --num_processes 2 -m vlmslim bench MODEL --data D --out R
vlmslim bench MODEL --data D --out R --processes 2        # the same launch, from vlmslim
```
(`--multi_gpu` is accelerate's name for its torchrun launcher; on a CPU-only machine the ranks talk over
gloo. Without it accelerate runs one process on a machine with fewer than two GPUs.)

Rank 0 is the results dir's one writer of shared files: it holds the lock for the whole run, merges what
earlier runs left, decides the still-to-do samples and the session id, writes config.yaml and the session
records, merges the ranks' rows and scores once. Every rank generates its share of batches (batch j of the
to-do list, in dataset order, goes to rank j % N: batches are those of a one-process run, so greedy outputs
match it) and appends to its own `samples.rank{r}.jsonl`. A failure on one rank is shared at the next
collective (`Ranks.agree`), so the others stop with it instead of waiting forever; a killed rank takes
the others down through the launcher, and what every rank flushed is merged by the next run, whatever
its number of processes.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
from accelerate import PartialState
from accelerate.commands.launch import launch_command, launch_command_parser
from accelerate.utils import broadcast_object_list, gather_object

from vlmslim.errors import BenchmarkError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the bench processes (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        """[obj of rank 0, obj of rank 1, …] on every rank."""
        return [obj] if self.world == 1 else gather_object([obj])

    def agree(self, fn: Callable[[], Any], what: str) -> Any:
        """Run `fn` on every rank; if it raised anywhere, raise everywhere (the failing rank its own error,
        the others a BenchmarkError naming it) instead of leaving them waiting at the next collective."""
        try:
            result, error = fn(), None
        except Exception as e:  # shared with the other ranks below, then re-raised unchanged
            result, error = None, e
        if self.world == 1:
            if error is not None:
                raise error
            return result
        messages = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(r, m) for r, m in enumerate(messages) if m]
        if failed:
            r, m = failed[0]
            raise BenchmarkError(f"bench process {r} failed while {what} ({m}); process {self.rank} stops too")
        return result


def current_ranks(cpu: bool) -> Ranks:
    """The ranks of a launched run (WORLD_SIZE > 1 in the environment): joins the process group (gloo when
    the model runs on the CPU, NCCL on GPUs) through accelerate. A plain process is rank 0 of 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    state = PartialState(cpu=cpu, **({"backend": "gloo"} if cpu else {}))
    return Ranks(state.process_index, state.num_processes, state.local_process_index)


def check_processes(processes: int, device: str | None, device_map: str | None) -> None:
    """BenchmarkError for what N processes cannot do: share one device map, or run on one named GPU."""
    if processes <= 1:
        return
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")  # BenchConfig's default
    if device_map is not None or device == "auto":
        raise BenchmarkError("--device-map spreads one model over the devices and --processes runs one model per "
                             "device: use one or the other")
    if device is not None and device.startswith("cuda:"):
        raise BenchmarkError(f"--device {device} names one GPU; with --processes each process takes its own "
                             "(pass --device cuda)")
    if device not in (None, "cpu") and torch.cuda.device_count() < processes:
        raise BenchmarkError(f"{processes} processes need {processes} GPUs, {torch.cuda.device_count()} visible "
                             "(fewer --processes, or --device cpu)")


def shard_batches(todo: list, batch_size: int, ranks: Ranks) -> list[tuple[int, list]]:
    """[(j, batch j)] of this rank: the to-do list cut into batches in order, batch j to rank j % world."""
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    return [(j, b) for j, b in enumerate(batches) if j % ranks.world == ranks.rank]


def free_port() -> int:
    """A TCP port nobody listens on now (torchrun's default 29500 collides with a concurrent run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int, argv: list[str]) -> None:
    """Run `python -m vlmslim ARGV…` in `num_processes` processes with accelerate's launcher (torchrun);
    BenchmarkError if a process failed (its own error is in its output above)."""
    args = launch_command_parser().parse_args(
        ["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "vlmslim", *argv])
    logger.info("launching %d bench processes: accelerate launch … -m vlmslim %s", num_processes, " ".join(argv))
    try:
        launch_command(args)
    except Exception as e:  # torchrun's ChildFailedError: the child's traceback is printed by the child
        raise BenchmarkError(f"a bench process failed ({type(e).__name__}); see its error above. Re-run the same "
                             "command to resume: every flushed row is kept") from e


def combine_energy(records: list[dict | None]) -> dict | None:
    """One energy record from the ranks' (each measured its own process and GPUs): Wh summed."""
    records = [r for r in records if r]
    if not records:
        return None
    out = dict(records[0])
    for key in ("gpu_wh", "cpu_wh", "ram_wh"):
        vals = [r[key] for r in records]
        out[key] = None if any(v is None for v in vals) else sum(vals)
    out["duration_s"] = max(r["duration_s"] for r in records)
    out["note"] = "; ".join(sorted({r["note"] for r in records if r.get("note")})) or None
    out["processes"] = len(records)
    return out


RANK_KEYS = ("rank", "devices", "n_generated", "n_skipped", "completed", "pass_s", "peak_vram_mb",
             "peak_vram_reserved_mb", "peak_vram_mb_per_device", "peak_rss_mb")


def combine_sessions(parts: list[dict]) -> dict:
    """The session record of N ranks: rank 0's description of the model, counts summed, per-process peaks
    as the max over ranks, every rank's own numbers under `ranks`."""
    first = parts[0]
    parts = [p for p in parts if "environment" in p]  # a rank that failed before describing its model
    peaks = [p.get("peak_vram_mb") for p in parts if p.get("peak_vram_mb") is not None]
    reserved = [p.get("peak_vram_reserved_mb") for p in parts if p.get("peak_vram_reserved_mb") is not None]
    per_device: dict[str, float] = {}
    for p in parts:
        for d, mb in (p.get("peak_vram_mb_per_device") or {}).items():
            per_device[d] = max(mb, per_device.get(d, 0.0))
    env = dict(first.get("environment") or {})
    env["device"] = "; ".join(f"rank {p['rank']}: {p['environment']['device']}" for p in parts)
    env["processes"] = len(parts)
    passes = [p["pass_s"] for p in parts if p.get("pass_s") is not None]
    return {
        **first, "environment": env,
        "n_generated": sum(p.get("n_generated", 0) for p in parts), "n_skipped": sum(p.get("n_skipped", 0) for p in parts),
        "completed": bool(parts) and all(p.get("completed") for p in parts),
        "pass_s": max(passes) if passes else None,  # the parallel pass lasts as long as its slowest rank
        "peak_vram_mb": max(peaks) if peaks else None, "peak_vram_reserved_mb": max(reserved) if reserved else None,
        "peak_vram_mb_per_device": per_device or None,
        "peak_rss_mb": max((p["peak_rss_mb"] for p in parts if p.get("peak_rss_mb")), default=None),
        "energy": combine_energy([p.get("energy") for p in parts]),
        "ranks": [{k: p.get(k) for k in RANK_KEYS} for p in parts],
    }
