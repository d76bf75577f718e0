"""Stamps: what an artifact of a sweep was made from, in a small file beside it (`<artifact>.stamp.json`).

A stamp is a sha256 over the step's config and its inputs' stamps (the base model: its weights hash), so
it changes whenever anything upstream changes. The file is written twice: `running` (with the identity of
whatever was under the artifact's name before) just before the step starts, `done` right after it
finished. Only `done` with a matching stamp counts as done; a step killed after its atomic rename but
before `done` is recognised by the new identity (a new inode under the final name), so it is not run twice.

    status       stamp file                          artifact
    done         done, same stamp                    complete
    done         running, same stamp                 complete, not the one there before the step
    will run     none (or running, same stamp)       absent or incomplete (a bench resumes its rows)
    will rebuild another stamp, or none              present: rebuilt (overwritten)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from vlmslim.manifest import now_utc

DONE, RUN, REBUILD = "done", "will run", "will rebuild"
SUFFIX = ".stamp.json"


def digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def stamp_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + SUFFIX)


def read_stamp(artifact: Path) -> dict | None:
    path = stamp_path(artifact)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # torn by a kill mid-write (it is replaced atomically, so only by a foreign writer)
    return record if isinstance(record, dict) else None


def write_stamp(artifact: Path, record: dict) -> None:
    path = stamp_path(artifact)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def identity(path: Path) -> list[int] | None:
    """(device, inode) of a file or dir: every atomic write puts a new inode under the final name."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino]


def start(artifact: Path, stamp: str, marker: Path, payload: dict, extra: dict | None = None) -> None:
    write_stamp(artifact, {"stamp": stamp, "state": "running", "previous": identity(marker), "started": now_utc(),
                           "payload": payload, **(extra or {})})


def finish(artifact: Path, stamp: str, marker: Path, payload: dict, extra: dict | None = None) -> None:
    record = read_stamp(artifact) or {}
    write_stamp(artifact, {**record, "stamp": stamp, "state": "done", "identity": identity(marker),
                           "finished": now_utc(), "payload": payload, **(extra or {})})


def status(artifact: Path, stamp: str, marker: Path, payload: dict) -> tuple[str, str]:
    """(DONE | RUN | REBUILD, why) of an artifact whose completion file is `marker`."""
    record = read_stamp(artifact)
    complete = marker.exists()
    if record is not None and record.get("stamp") == stamp:
        if complete and record.get("state") == "done":
            return DONE, ""
        if complete and record.get("state") == "running" and identity(marker) != record.get("previous"):
            return DONE, "finished just before an interruption"
        return RUN, "resumes an interrupted run" if artifact.exists() else ""
    if record is None:
        if artifact.exists():
            return REBUILD, "no stamp (made outside this sweep, or before it stamped)"
        return RUN, ""
    return REBUILD, changed(record.get("payload") or {}, payload) or "inputs changed"


def changed(old: dict, new: dict, prefix: str = "") -> str:
    """'glu: 0.3 -> 0.4; input changed' — the first few differences between two payloads."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            inner = changed(a, b, name + ".")
            diffs.append(inner)
        elif key in ("input", "checkpoint", "data", "calibration", "baseline", "results") or \
                isinstance(a, str) and len(a) == 64:
            diffs.append(f"{name} changed")
        else:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return "; ".join(d for d in diffs if d)[:200]
