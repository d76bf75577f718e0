"""Atomic output directories, one writer per output, and small file helpers shared by every step.

An artifact is built in `<out>.partial-<pid>/` and renamed to `<out>` only when complete, so an
interrupted step never leaves a half-written directory under the final name. While a step writes
`<out>` it holds `<out>`'s lock (`.<name>.lock` next to it, `fcntl.flock`): a second writer fails at
once naming the holder's PID, and the final rename never replaces an output that appeared meanwhile.
The OS drops the lock when its process dies, so a killed step never blocks the next one; that next
one removes the partial dirs the dead process left.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import glob
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
from pathlib import Path

from safetensors import SafetensorError

from vlmslim.errors import OutputBusyError, OutputExistsError, OutputWriteError

logger = logging.getLogger(__name__)

# Staging dirs this process is filling: a save into one of them (a step's save_checkpoint inside the
# step's own atomic_dir) writes in place instead of nesting a second `.partial-PID` layer.
_STAGING: set[Path] = set()
# Outputs whose lock this process holds for a whole step (`holds_output`): atomic_dir reuses that lock.
_CLAIMED: set[Path] = set()
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # the output's disk, not the step, failed
_LEFTOVER = re.compile(r"\.(partial|old)-(\d+)")  # what follows `<out>` in a staging / backup dir name


def check_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early (before any work) when `out` exists and may not be replaced, or another process is
    writing it right now (the authoritative checks are repeated under the lock in `atomic_dir`)."""
    out = Path(out)
    if lock_path(out).exists():
        with output_lock(out):  # raises OutputBusyError naming the holder; released at once
            pass
    return _check_replaceable(out, overwrite)


def holds_output(step):
    """Decorate a step `step(..., out, ..., overwrite=False)` to hold `out`'s lock for the whole call (load,
    compute, save): a second writer of the same `out` fails at once naming this PID instead of after its
    own work, and `out` is checked (exists? --overwrite?) under the lock before anything runs."""
    signature = inspect.signature(step)

    @functools.wraps(step)
    def run(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out = Path(bound.arguments["out"])
        with output_lock(out):
            with write_errors(out):  # only the output's own files here: the step's other writes name theirs
                clean_stale(out)
            _check_replaceable(out, bound.arguments["overwrite"])
            _CLAIMED.add(out.absolute())
            try:
                return step(*args, **kwargs)
            finally:
                _CLAIMED.discard(out.absolute())

    return run


def _check_replaceable(out: Path, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} exists and is not a directory")
    return out


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


def _unwritable(path: Path, e: OSError) -> OutputWriteError:
    return OutputWriteError(f"cannot write to {path}: {e.strerror or e}; choose an --out on a writable disk")


@contextlib.contextmanager
def write_errors(out: str | os.PathLike):
    """Turn a failed write while building `out` (disk full, quota, read-only) into one OutputWriteError."""
    try:
        yield
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        raise OutputWriteError(f"cannot write {out}: {os.strerror(e.errno)}; free space (or choose another "
                               "--out) and re-run the same command") from e
    except SafetensorError as e:  # its Rust writer keeps only the OS error's text: "(os error 28)"
        if f"(os error {errno.ENOSPC})" not in str(e):
            raise
        raise OutputWriteError(f"cannot write {out}: {os.strerror(errno.ENOSPC)}; free space (or choose "
                               "another --out) and re-run the same command") from e


@contextlib.contextmanager
def output_lock(out: str | os.PathLike):
    """Hold `out`'s exclusive lock for the block; OutputBusyError (naming the holder's PID) if another
    writer holds it. Not re-entrant: a second acquisition, even in this process, is refused."""
    path = lock_path(Path(out).absolute())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, out)
    except OSError as e:
        raise _unwritable(path.parent, e) from e
    try:
        yield
    finally:
        # Unlink while still holding the lock: a waiter that opened the old file re-checks the inode.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _acquire(path: Path, out) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusyError(f"{out} is being written by another vlmslim process (PID {holder}); "
                                  "wait for it to finish or use another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the previous holder unlinked it between our open and flock: take the new file
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process of this PID exists (stale locks and partials of dead processes are cleaned)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(out: Path) -> None:
    """Remove `<out>.partial-PID*` / `<out>.old-PID` left by dead processes (call under `out`'s lock).

    A backup `.old-PID` means the process died mid-swap: when `out` is missing it is the last complete
    output and is renamed back instead of deleted.
    """
    for p in sorted(out.parent.glob(glob.escape(out.name) + ".*")):
        m = _LEFTOVER.match(p.name[len(out.name):])
        if m is None or not p.is_dir():
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or pid_alive(pid):
            logger.warning("leaving %s: process %d is still running", p, pid)
            continue
        if m.group(1) == "old" and not out.exists():
            p.rename(out)
            logger.warning("restored %s from %s (a killed run's swap)", out, p.name)
        else:
            shutil.rmtree(p)
            logger.info("removed %s (left by killed process %d)", p, pid)


def clean_stale_files(folder: Path, pattern: str) -> None:
    """Remove files `pattern` (ending in `-PID`) in `folder` whose process is dead: the temporary files
    of a killed atomic file write (call under the lock of what `folder` belongs to)."""
    for p in folder.glob(pattern):
        pid = p.name.rsplit("-", 1)[-1]
        if p.is_file() and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            p.unlink()
            logger.info("removed %s (left by killed process %s)", p, pid)


_libc = ctypes.CDLL(None, use_errno=True)
_RENAMEAT2 = getattr(_libc, "renameat2", None)
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, failing with FileExistsError if `dst` exists (a plain rename(2) of a dir
    silently replaces an empty dir at `dst`). renameat2(RENAME_NOREPLACE) where the kernel and file
    system have it; else check-then-rename, which the output lock makes safe among vlmslim writers."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False):
    """Yield a fresh staging dir; on success it replaces `out`, on any exception it is removed.

    Holds `out`'s lock throughout. The old `out` (with `overwrite`) is moved aside, not deleted, until
    the new one is in place, so a failure during the swap loses neither. Called on a staging dir this
    process is filling, it yields that dir itself (the outer atomic_dir makes it atomic).
    """
    if Path(out).absolute() in _STAGING:
        yield Path(out)
        return
    claimed = Path(out).absolute() in _CLAIMED  # the step holds the lock already (holds_output)
    with contextlib.nullcontext() if claimed else output_lock(out), write_errors(out):
        out = Path(out)
        clean_stale(out)
        _check_replaceable(out, overwrite)
        staging = out.with_name(f"{out.name}.partial-{os.getpid()}")
        try:
            staging.mkdir()
        except OSError as e:
            raise _unwritable(out.parent, e) from e
        _STAGING.add(staging.absolute())
        done = False
        try:
            yield staging
            _swap(staging, out, overwrite)
            done = True
        finally:
            _STAGING.discard(staging.absolute())
            if not done:  # an exception or Ctrl-C inside the block: nothing under any name survives
                shutil.rmtree(staging, ignore_errors=True)
    logger.debug("wrote %s", out)


def _swap(staging: Path, out: Path, overwrite: bool) -> None:
    backup = None
    if out.exists():
        if not overwrite:
            raise OutputExistsError(f"output {out} appeared while this step ran (another writer); it was left "
                                    "as it is: pass --overwrite to replace it, or another --out")
        backup = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(backup)
    try:
        rename_noreplace(staging, out)
    except FileExistsError as e:  # created in the instant since the check (a writer taking no lock)
        raise OutputExistsError(f"output {out} appeared while this step ran; it was left as it is") from e
    finally:
        if backup is not None and not out.exists():
            backup.rename(out)  # the swap failed: the old output goes back
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    Path(path).write_text(json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_size(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
