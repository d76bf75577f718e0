"""Fault sweep: kills, a full disk, a read-only parent and two-writer races on the demo model, each checked.

    python -m studies.fault_sweep                              # all 21 scenarios (~10 min on 2 busy cores)
    python -m studies.fault_sweep --only kill-prune-KILL,race-prune-paused
    python -m studies.fault_sweep --report docs/faults.md      # also write the table (machine, date)

Every scenario runs `python -m vlmslim …` in subprocesses on the embedded demo model and a 16-image
synthetic dataset, then checks what a user relies on: the expected exit (the signal; or 1 with exactly one
`Error:` line and no traceback), nothing under the final name that is not complete, and that re-running
the same command once the fault is gone completes and leaves no `.partial*` / `.old-*` / lock / temp file.

How faults are made: kill -9 / SIGTERM when the step's staging dir appears (bench: after its 4th row);
disk full = a 64 MB tmpfs filled up to a few KB; read-only = a tmpfs remounted read-only (as root,
permission bits stop nothing); races = a second process while the first is paused with SIGSTOP, or two
started together. Mounting needs root (CAP_SYS_ADMIN); without it read-only falls back to chmod 555
and the disk-full scenarios are reported as skipped.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click

import vlmslim
from vlmslim.benchmarks.results import read_jsonl

logger = logging.getLogger("studies.fault_sweep")

N_DATA, LIMIT = 16, 12  # dataset size; samples a bench generates (the rewrite race grows it to N_DATA)
BENCH = ("--batch-size", "1", "--bootstrap", "10", "--no-energy")
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}
FREE_BYTES = {"prune": 1 << 20, "bench": 16 << 10, "figures": 64 << 10, "synthetic": 64 << 10}  # left on the tmpfs
LEFTOVER = re.compile(r"\.(partial|old)-\d+|\.partial$|\.lock$|\.tmp-\d+$")


@dataclass
class Outcome:
    scenario: str
    outcome: str
    clean: bool | None  # None: skipped (the fault cannot be made here)


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if LEFTOVER.search(p.name))


def one_error_line(stderr: str) -> str | None:
    """The single `Error:` line of a clean failure, or None (a traceback, or no or several errors)."""
    lines = [line for line in stderr.splitlines() if line.startswith("Error:")]
    return lines[0] if len(lines) == 1 and "Traceback" not in stderr else None


def has_child(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().strip())
    except OSError:
        return False


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


class Sweep:
    """Runs scenarios in `work`; each gets a fresh subdir, every subprocess's stderr is kept in work/logs."""

    def __init__(self, work: Path, timeout: float = 600.0):
        self.work, self.timeout, self.mounts, self.n = work, timeout, [], 0
        (work / "logs").mkdir(parents=True, exist_ok=True)
        root = str(Path(vlmslim.__file__).resolve().parents[1])  # the children import this very vlmslim
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.data, self.base_results = work / "data", work / "base-results"

    # ------------------------------------------------------------ processes

    def start(self, *args) -> subprocess.Popen:
        self.n += 1
        log = self.work / "logs" / f"{self.n:03d}"
        cmd = [sys.executable, "-m", "vlmslim", "-q", *map(str, args)]
        (log.with_suffix(".cmd")).write_text(" ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, env=self.env, stdout=open(log.with_suffix(".out"), "w"),
                                stderr=open(log.with_suffix(".err"), "w"))
        proc.err_path = log.with_suffix(".err")
        return proc

    def finish(self, proc: subprocess.Popen) -> tuple[int, str]:
        rc = proc.wait(self.timeout)
        return rc, proc.err_path.read_text()

    def run(self, *args) -> tuple[int, str]:
        return self.finish(self.start(*args))

    def wait_until(self, proc: subprocess.Popen, cond: Callable[[], bool], poll: float = 0.002) -> bool:
        """True as soon as `cond()` holds while `proc` runs; False if it exits first."""
        deadline = time.monotonic() + self.timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(poll)
        return False

    def short(self, text: str | None, width: int = 140) -> str:
        return (text or "").replace(str(self.work), "$WORK")[:width]

    def fresh(self, name: str) -> Path:
        d = self.work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return d

    # ------------------------------------------------------------ steps

    def setup(self, figures: bool) -> None:
        """The dataset; for the figures scenarios also one finished results dir to plot."""
        steps = [("data", "synthetic", "--out", self.data, "--n", N_DATA)]
        if figures:
            steps.append(("bench", "demo", "--data", self.data, "--out", self.base_results, "--limit", 4, *BENCH))
        for args in steps:
            rc, err = self.run(*args)
            if rc != 0:
                raise click.ClickException(f"setup step {args[0]} failed: {last_line(err)}")

    def command(self, step: str, out: Path, limit: int = LIMIT) -> tuple:
        return {"prune": ("prune", "demo", "--out", out, "--glu", "0.3"),
                "quantize": ("quantize", "demo", "--out", out, "--bits", "8"),
                "bench": ("bench", "demo", "--data", self.data, "--out", out, "--limit", limit, *BENCH),
                "figures": ("figures", self.base_results, "--out", out),
                "synthetic": ("data", "synthetic", "--out", out, "--n", 64)}[step]

    def rows(self, out: Path) -> int:
        try:
            return (out / "samples.jsonl").read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def session_ended(self, out: Path) -> bool:
        try:
            return b'"ended"' in (out / "sessions.jsonl").read_bytes()
        except FileNotFoundError:
            return False

    def midway(self, step: str, out: Path) -> bool:
        if step == "bench":
            return self.rows(out) >= 4
        return any(out.parent.glob(f"{out.name}.partial-*"))

    def complete(self, step: str, out: Path, n: int = LIMIT) -> list[str]:
        """Problems with a finished output (none = complete)."""
        if step == "bench":
            if not (out / "summary.json").is_file():
                return ["no summary.json"]
            summary = json.loads((out / "summary.json").read_text())
            ids = [r["id"] for r in read_jsonl(out / "samples.jsonl")]
            return ([f"n_samples {summary['n_samples']} != {n}"] if summary["n_samples"] != n else []) + (
                ["duplicate rows"] if len(ids) != len(set(ids)) else [])
        marker = {"prune": "vlmslim.json", "quantize": "vlmslim.json", "figures": "summary.md",
                  "synthetic": "meta.json"}[step]
        return [] if (out / marker).is_file() else [f"{out.name}/{marker} missing"]

    def resumed(self, out: Path) -> list[str]:
        """A bench resumed after a kill: both sessions counted, unique batch ids, timing from all rows."""
        summary, rows = json.loads((out / "summary.json").read_text()), read_jsonl(out / "samples.jsonl")
        run, problems = summary["run"], []
        if not run.get("resumed") or run.get("killed_sessions") != 1:
            problems.append(f"run record {run}")
        if len({r["batch"] for r in rows}) != len(rows):  # batch size 1
            problems.append("repeated batch ids")
        expect, got = len(rows) / sum(r["latency_s"] for r in rows), summary["efficiency"]["throughput_images_per_s"]
        if abs(got - expect) > 1e-6 * expect:
            problems.append(f"throughput {got:.4g} != {expect:.4g} from the rows")
        return problems

    # ------------------------------------------------------------ tmpfs

    def tmpfs(self, name: str, read_only: bool = False) -> Path | None:
        mnt = self.fresh(name)
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True)
        if mount.returncode:
            return None
        self.mounts.append(mnt)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        return mnt

    def unmount_all(self) -> None:
        for mnt in reversed(self.mounts):
            subprocess.run(["umount", str(mnt)], capture_output=True)
        self.mounts.clear()

    # ------------------------------------------------------------ scenarios

    def kill(self, step: str, sig: str) -> Outcome:
        name = f"kill -{sig} mid-{step}"
        d = self.fresh(f"kill-{step}-{sig}")
        out, args = d / "out", self.command(step, d / "out")
        proc = self.start(*args)
        if not self.wait_until(proc, lambda: self.midway(step, out)):
            return Outcome(name, f"not hit: exit {self.finish(proc)[0]} before the signal", False)
        proc.send_signal(SIGNALS[sig])
        rc, _ = self.finish(proc)
        left = leftovers(d)
        problems = [] if rc == -SIGNALS[sig] else [f"exit {rc}"]
        if step != "bench" and out.exists():  # bench's results dir is meant to keep the rows made so far
            problems.append("output under the final name after the kill")
        rc2, err2 = self.run(*args)
        problems += [f"re-run: {last_line(err2)}"] if rc2 else self.complete(step, out)
        if step == "bench" and not rc2:
            problems += self.resumed(out)
        if after := leftovers(d):
            problems.append(f"left {after}")
        done = "; ".join(problems) or "complete, nothing left"
        return Outcome(name, f"exit {rc}, {len(left)} leftover(s); re-run exit {rc2}: {done}", not problems)

    def fault_then_rerun(self, name: str, step: str, out: Path, fix: Callable[[], None]) -> Outcome:
        """Run `step` into `out` (the fault in place), check a clean failure, `fix()`, re-run, check it completes."""
        args = self.command(step, out)
        rc, err = self.run(*args)
        line, problems = one_error_line(err), []
        if rc != 1 or line is None:
            problems.append("a traceback" if "Traceback" in err else f"exit {rc}, not one Error line")
        if step != "bench" and out.exists():
            problems.append("output under the final name")
        fix()
        rc2, err2 = self.run(*args)
        problems += [f"re-run: {last_line(err2)}"] if rc2 else self.complete(step, out)
        if after := leftovers(out.parent):
            problems.append(f"left {after}")
        shown = self.short(line or last_line(err))
        return Outcome(name, f"exit {rc}: {shown}; re-run exit {rc2}" + (f" ({'; '.join(problems)})"
                                                                               if problems else ""), not problems)

    def disk_full(self, step: str) -> Outcome:
        name = f"disk full during {step}"
        mnt = self.tmpfs(f"full-{step}")
        if mnt is None:
            return Outcome(name, "skipped: no tmpfs mount here (needs root)", None)
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            left = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize - FREE_BYTES[step]
            while left > 0:
                left -= f.write(b"\0" * min(left, 1 << 20))
        return self.fault_then_rerun(name, step, mnt / "out", filler.unlink)

    def read_only(self, step: str) -> Outcome:
        name = f"read-only parent: {step}"
        mnt = self.tmpfs(f"ro-{step}", read_only=True)
        if mnt is not None:
            def fix():
                subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True, capture_output=True)
        elif os.geteuid() != 0:
            mnt = self.fresh(f"ro-{step}")
            mnt.chmod(0o555)

            def fix():
                mnt.chmod(0o755)
        else:
            return Outcome(name, "skipped: root without mount rights (permission bits do not stop root)", None)
        return self.fault_then_rerun(name, step, mnt / "out", fix)

    def _second_refused(self, first: subprocess.Popen, rc: int, err: str) -> list[str]:
        line = one_error_line(err)
        if rc == 1 and line and f"PID {first.pid}" in line:
            return []
        return [f"second writer exit {rc}: {line or last_line(err)}"]

    def race_bench(self, during: str) -> Outcome:
        """B on A's --out while A appends rows (A paused after its 2nd row), or while A scores before it
        rewrites samples.jsonl (A paused after its session's end record; B asks for more samples, rows
        that A's rewrite would drop)."""
        name = f"second bench on one --out while the first {'appends' if during == 'appending' else 'rewrites'}"
        d = self.fresh(f"race-bench-{during}")
        out = d / "res"
        first = self.start(*self.command("bench", out))
        if during == "appending":
            hit = self.wait_until(first, lambda: self.rows(out) >= 2)
        else:  # scoring: samples.jsonl closed, Java (PTB tokenizer, METEOR) running as its child, rewrite next
            hit = self.wait_until(first, lambda: self.session_ended(out) and has_child(first.pid))
        if not hit or first.poll() is not None:
            return Outcome(name, f"not hit: exit {self.finish(first)[0]} first", False)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            rc_b, err_b = self.run(*self.command("bench", out, N_DATA if during == "rewriting" else LIMIT))
        finally:
            os.kill(first.pid, signal.SIGCONT)
        rc_a, err_a = self.finish(first)
        problems = self._second_refused(first, rc_b, err_b)
        problems += [f"first: {last_line(err_a)}"] if rc_a else self.complete("bench", out)
        if rc_b == 0 and during == "rewriting" and self.rows(out) < N_DATA:
            problems.append(f"the second's rows lost: {self.rows(out)} rows after both exited 0")
        if during == "rewriting":  # B again, now alone: it adds its samples to A's
            rc_c, err_c = self.run(*self.command("bench", out, N_DATA))
            problems += [f"re-run: {last_line(err_c)}"] if rc_c else self.complete("bench", out, N_DATA)
        if after := leftovers(d):
            problems.append(f"left {after}")
        return Outcome(name, f"second exit {rc_b} ({self.short(one_error_line(err_b))}); first exit {rc_a}"
                       + (f"; {'; '.join(problems)}" if problems else "; all rows kept"), not problems)

    def race_prune_paused(self) -> Outcome:
        name = "second prune while the first is paused mid-save"
        d = self.fresh("race-prune-paused")
        out, args = d / "out", self.command("prune", d / "out")
        first = self.start(*args)
        if not self.wait_until(first, lambda: self.midway("prune", out)):
            return Outcome(name, f"not hit: exit {self.finish(first)[0]} first", False)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            rc_b, err_b = self.run(*args)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        rc_a, err_a = self.finish(first)
        problems = self._second_refused(first, rc_b, err_b)
        problems += [f"first: {last_line(err_a)}"] if rc_a else self.complete("prune", out)
        if after := leftovers(d):
            problems.append(f"left {after}")
        return Outcome(name, f"second exit {rc_b} ({self.short(one_error_line(err_b))}); first exit {rc_a}"
                       + (f"; {'; '.join(problems)}" if problems else "; its output complete"), not problems)

    def race_prune_together(self) -> Outcome:
        name = "two prunes to one --out started together"
        d = self.fresh("race-prune-together")
        out, args = d / "out", self.command("prune", d / "out")
        procs = [self.start(*args), self.start(*args)]
        results = [self.finish(p) for p in procs]
        codes = sorted(rc for rc, _ in results)
        loser = next((err for rc, err in results if rc), "")
        problems = [] if codes == [0, 1] and one_error_line(loser) else [f"exits {codes}: {last_line(loser)}"]
        problems += self.complete("prune", out)
        if after := leftovers(d):
            problems.append(f"left {after}")
        return Outcome(name, f"exits {codes}; loser: {self.short(one_error_line(loser) or last_line(loser))}"
                       + (f"; {'; '.join(problems)}" if problems else ""), not problems)


def scenarios(sweep: Sweep) -> dict[str, Callable[[], Outcome]]:
    table = {f"kill-{step}-{sig}": (lambda step=step, sig=sig: sweep.kill(step, sig))
             for step in ("prune", "quantize", "bench", "figures") for sig in SIGNALS}
    table |= {f"full-{step}": (lambda step=step: sweep.disk_full(step)) for step in FREE_BYTES}
    table |= {f"ro-{step}": (lambda step=step: sweep.read_only(step))
              for step in ("prune", "quantize", "bench", "figures", "synthetic")}
    table |= {"race-bench-appending": lambda: sweep.race_bench("appending"),
              "race-bench-rewriting": lambda: sweep.race_bench("rewriting"),
              "race-prune-paused": sweep.race_prune_paused, "race-prune-together": sweep.race_prune_together}
    return table


def run_sweep(work: Path, only: list[str] | None = None) -> list[Outcome]:
    sweep = Sweep(work)
    table = scenarios(sweep)
    unknown = sorted(set(only or ()) - set(table))
    if unknown:
        raise click.BadParameter(f"unknown scenario(s) {unknown}; see --list", param_hint="--only")
    keys = only or list(table)
    sweep.setup(figures=any("figures" in k for k in keys))
    outcomes = []
    try:
        for key in keys:
            logger.info("scenario %s", key)
            outcomes.append(table[key]())
            logger.info("  -> %s: %s", "clean" if outcomes[-1].clean else "NOT clean", outcomes[-1].outcome)
    finally:
        sweep.unmount_all()
    return outcomes


def markdown(outcomes: list[Outcome]) -> str:
    tried = [o for o in outcomes if o.clean is not None]
    lines = ["| scenario | outcome | clean? |", "|---|---|---|"]
    lines += [f"| {o.scenario} | {o.outcome.replace('|', '/')} | "
              f"{'skipped' if o.clean is None else 'yes' if o.clean else '**no**'} |" for o in outcomes]
    lines += ["", f"**{len(tried)} tried / {sum(o.clean for o in tried)} clean**"
              + (f" ({len(outcomes) - len(tried)} skipped)" if len(tried) < len(outcomes) else "")]
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return (f"{cpu}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
            f"torch {importlib.metadata.version('torch')}, transformers {importlib.metadata.version('transformers')}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Scratch dir, kept [default: a temp dir].")
@click.option("--only", default=None, metavar="ID,ID", help="Run only these scenarios (see --list).")
@click.option("--list", "list_only", is_flag=True, help="List the scenario ids and exit.")
@click.option("--report", type=click.Path(path_type=Path), default=None, help="Write the table to this markdown file.")
def main(work, only, list_only, report):
    """Run the fault scenarios on the demo model; exit 1 if any is not clean."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if list_only:
        with tempfile.TemporaryDirectory() as tmp:
            click.echo("\n".join(scenarios(Sweep(Path(tmp)))))
        return
    keep = work is not None
    work = work or Path(tempfile.mkdtemp(prefix="vlmslim-faults-"))
    try:
        outcomes = run_sweep(work, only.split(",") if only else None)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    table = markdown(outcomes)
    click.echo(table)
    if report:
        date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
        report.write_text(f"# Fault sweep\n\n`python -m studies.fault_sweep` on {date}, {machine()}.\n\n{table}")
    if any(o.clean is False for o in outcomes):
        sys.exit(1)


if __name__ == "__main__":
    main()
