"""The results directory: append-only sample rows, session records, config, summaries.

```
OUT/
  config.yaml      resolved BenchConfig + protocol + checkpoint/dataset hashes (rewritten per session)
  samples.jsonl    one row per processed sample, appended + flushed per batch; after scoring it is
                   rewritten once, atomically, with each row's `scores` filled in
  sessions.jsonl   one row per bench invocation: device, peak memory, energy, bandwidth, census
  summary.json     the report (keys in summary.py); summary.csv = one tidy row of it (summary.csv_row)
  scores_cache.json  the last scores (and --baseline differences), keyed by a hash of predictions,
                   references and scoring settings: re-running a finished bench does not re-score
```

A process killed mid-write leaves at most a torn last line in samples.jsonl; `open_samples` drops it
(truncating the file so later appends start on a fresh line).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import yaml

from vlmslim.errors import BenchmarkError
from vlmslim.io import sha256_file

logger = logging.getLogger(__name__)

CONFIG = "config.yaml"
SAMPLES = "samples.jsonl"
SESSIONS = "sessions.jsonl"
SUMMARY = "summary.json"
SUMMARY_CSV = "summary.csv"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")


# ---------------------------------------------------------------- hashing


def weights_sha256(model_dir: str | os.PathLike) -> tuple[str, list[str]]:
    """sha256 over (file name, file sha256) of every weights file: the identity results are keyed by."""
    root = Path(model_dir)
    files = sorted({p for pat in WEIGHT_PATTERNS for p in root.glob(pat) if p.is_file()})
    if not files:
        raise BenchmarkError(f"no weights files ({', '.join(WEIGHT_PATTERNS)}) in {root}; cannot key results by them")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest(), [f.name for f in files]


def weights_dir(source: str) -> Path:
    """The directory holding the weights: a local dir, or a hub id's resolved snapshot (downloaded if needed)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, allow_patterns=[*WEIGHT_PATTERNS, "*.json"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise BenchmarkError(f"cannot resolve the weights of {source!r} to hash them: {e}") from e


# ---------------------------------------------------------------- jsonl


def _parse_lines(path: Path) -> tuple[list[dict], int | None]:
    """(rows, where the file must be cut): None = intact; -1 = complete last row without its newline;
    an offset = a torn last row starts there. Only the unterminated tail can be torn by a kill; a bad
    line elsewhere is corruption and an error."""
    data = path.read_bytes()
    *complete, tail = data.split(b"\n")  # tail: b"" when the file ends with a newline
    rows = []
    for i, line in enumerate(complete):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{path}: line {i + 1} is not valid JSON ({e}); "
                                     "the results file is corrupt") from e
    if not tail.strip():
        return rows, None
    try:
        rows.append(json.loads(tail))  # a row object is only valid JSON once complete
        return rows, -1
    except json.JSONDecodeError:
        return rows, len(data) - len(tail)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    return _parse_lines(path)[0] if path.exists() else []


class SamplesWriter:
    """Append-only writer of samples.jsonl: repairs a torn tail, locks the file, flushes per batch."""

    def __init__(self, out: Path):
        self.path = out / SAMPLES
        self.fh = open(self.path, "a+b")
        try:
            # One writer per results dir; the OS drops the lock if the process dies, so a kill never blocks resume.
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self.fh.close()
            raise BenchmarkError(f"another `vlmslim bench` is writing to {out}; "
                                 "wait for it or use another --out") from e
        rows, torn = _parse_lines(self.path)
        if torn == -1:
            self.fh.write(b"\n")
        elif torn is not None:
            logger.warning("%s: dropping a torn last line (an interrupted write); its sample is re-run", self.path)
            self.fh.truncate(torn)
        self.fh.flush()
        self.rows = rows

    def append(self, rows: list[dict]) -> None:
        self.fh.write(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows))
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.rows.extend(rows)

    def close(self) -> None:
        self.fh.close()


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def rewrite_samples(out: Path, rows: list[dict]) -> None:
    """Replace samples.jsonl in one rename (the scored copy): no reader ever sees a half-written file."""
    atomic_write_text(out / SAMPLES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ---------------------------------------------------------------- config + compatibility

# What makes two sessions' rows comparable: same weights, data and generation protocol. Scoring settings
# (bootstrap, BERTScore model, baseline) and --limit are recomputed per run and may change freely.
PROTOCOL_KEYS = ("task", "prompt", "max_new_tokens", "batch_size", "dtype", "device", "quant", "ocr_tokens", "engine",
                 "image_tokens", "token_method")


def read_config(out: Path) -> dict | None:
    f = out / CONFIG
    return yaml.safe_load(f.read_text()) if f.exists() else None


def write_config(out: Path, config: dict) -> None:
    atomic_write_text(out / CONFIG, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def check_resumable(out: Path, old: dict, new: dict) -> None:
    """Refuse to mix rows from another checkpoint, dataset or generation protocol into `out`."""
    changes = []
    if old.get("checkpoint_sha256") != new["checkpoint_sha256"]:
        changes.append(f"checkpoint weights (sha256 {str(old.get('checkpoint_sha256'))[:12]}… -> "
                       f"{new['checkpoint_sha256'][:12]}…)")
    if old.get("dataset_sha256") != new["dataset_sha256"]:
        changes.append("dataset (samples.jsonl sha256 differs)")
    old_p, new_p = old.get("generation", {}), new["generation"]
    changes += [f"{k}: {old_p.get(k)!r} -> {new_p.get(k)!r}" for k in PROTOCOL_KEYS if old_p.get(k) != new_p.get(k)]
    if changes:
        raise BenchmarkError(f"{out} holds results of a different run ({'; '.join(changes)}); they cannot be "
                             "mixed: pass a new --out (or delete the old results)")


# ---------------------------------------------------------------- summary


def write_summary(out: Path, summary: dict, row: dict) -> None:
    """summary.json, and summary.csv: a header and `row` (scalar cells)."""
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2, default=str) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    atomic_write_text(out / SUMMARY_CSV, buf.getvalue())


def read_results(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """(summary, rows) of a finished results dir (for --baseline)."""
    path = Path(path)
    if not (path / SUMMARY).is_file() or not (path / SAMPLES).is_file():
        raise BenchmarkError(f"{path} is not a finished results dir (needs {SUMMARY} and {SAMPLES})")
    return json.loads((path / SUMMARY).read_text()), read_jsonl(path / SAMPLES)
