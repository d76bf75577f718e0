"""The results directory: append-only sample rows, session records, config, summaries.

```
OUT/
  config.yaml      resolved BenchConfig + protocol + checkpoint/dataset hashes (rewritten per session,
                   written only once the model has loaded: a run that fails before leaves no results dir)
  samples.jsonl    one row per processed sample, appended + flushed per batch; after scoring it is
                   rewritten once, atomically, with each row's `scores` filled in
  samples.rank{r}.jsonl  a data-parallel run's rows of rank r (parallel.py), merged into samples.jsonl
                   in sample order by rank 0 at the end of the pass, or by the next run after a kill
  sessions.jsonl   two records per bench invocation: `event: start` when it begins generating, `event: end`
                   (device, peak memory, energy, bandwidth, census) when it stops; no end = killed
  summary.json     the report (keys in summary.py); summary.csv = one tidy row of it (summary.csv_row)
  scores_cache.json  the last scores (and --baseline differences), keyed by a hash of predictions,
                   references and scoring settings: re-running a finished bench does not re-score
```

One writer per results dir: `bench` holds the dir's lock (`vlmslim.io.output_lock`) for the whole run,
config write and scoring included (a data-parallel run: rank 0 holds it; the other ranks write only their
own rank file, inside rank 0's lock). A process killed mid-write leaves at most a torn last line in
samples.jsonl; `SamplesWriter` drops it (truncating the file so later appends start on a fresh line).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import yaml

from vlmslim.errors import BenchmarkError
from vlmslim.io import clean_stale_files, sha256_file

logger = logging.getLogger(__name__)

CONFIG = "config.yaml"
SAMPLES = "samples.jsonl"
SESSIONS = "sessions.jsonl"
SUMMARY = "summary.json"
SUMMARY_CSV = "summary.csv"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
# Besides the weights, what decides a checkpoint's outputs: config.json (architecture, norms, rope),
# generation_config.json, the processor/tokenizer files and chat template. vlmslim.json (timestamps)
# and README.md (the model card) do not.
CONFIG_PATTERNS = ("*.json", "*.jinja", "*.model", "vocab*.txt", "merges*.txt")
NOT_IDENTITY = ("vlmslim.json",)


# ---------------------------------------------------------------- hashing


def checkpoint_sha256(model_dir: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """(sha256 over (name, sha256) of every weights, config and processor file, {name: its sha256}):
    the identity results are keyed by. Same weights under another config.json is another model."""
    root = Path(model_dir)
    weights = sorted({p for pat in WEIGHT_PATTERNS for p in root.glob(pat) if p.is_file()})
    if not weights:
        raise BenchmarkError(f"no weights files ({', '.join(WEIGHT_PATTERNS)}) in {root}; cannot key results by them")
    others = {p for pat in CONFIG_PATTERNS for p in root.glob(pat) if p.is_file() and p.name not in NOT_IDENTITY}
    files = {p.name: sha256_file(p) for p in sorted({*weights, *others})}
    h = hashlib.sha256()
    for name, digest in files.items():
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest(), files


def weight_files(files: dict[str, str]) -> list[str]:
    """The weights among `checkpoint_sha256`'s files (for bytes on disk)."""
    return [n for n in files if any(Path(n).match(pat) for pat in WEIGHT_PATTERNS)]


def weights_dir(source: str) -> Path:
    """The directory holding the weights: a local dir, or a hub id's resolved snapshot (downloaded if needed)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, allow_patterns=[*WEIGHT_PATTERNS, *CONFIG_PATTERNS]))
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
    """Append-only writer of samples.jsonl (or a rank's file): repairs a torn tail, flushes per batch. The
    caller holds the results dir's lock (`vlmslim.io.output_lock`) for as long as it writes."""

    def __init__(self, out: Path, name: str = SAMPLES):
        self.path = out / name
        self.fh = open(self.path, "a+b")
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
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:  # a failed write (disk full) leaves no temp file; after the replace there is none
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def rewrite_samples(out: Path, rows: list[dict]) -> None:
    """Replace samples.jsonl in one rename (the scored copy): no reader ever sees a half-written file."""
    atomic_write_text(out / SAMPLES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def rank_file(rank: int) -> str:
    return f"samples.rank{rank}.jsonl"


def merge_rank_files(out: Path, order: dict[str, int]) -> list[dict]:
    """samples.jsonl's rows followed by the rows of every `samples.rank*.jsonl` (a torn last line dropped),
    those sorted by `order` (sample id -> dataset position; unknown ids last) and rows already present
    dropped; the merged file is written in one rename, then the rank files are removed. A kill between the
    two leaves rows in both places: the next merge drops them from the rank files. Returns the rows."""
    files = sorted(out.glob("samples.rank*.jsonl"))
    rows = read_jsonl(out / SAMPLES)
    if not files:
        return rows
    seen = {r["id"] for r in rows}
    new = []
    for f in files:
        for r in read_jsonl(f):
            if r["id"] in seen:
                logger.info("%s: %s is already in %s (an interrupted merge): not added twice", f.name, r["id"], SAMPLES)
                continue
            seen.add(r["id"])
            new.append(r)
    new.sort(key=lambda r: order.get(r["id"], len(order)))
    rewrite_samples(out, rows + new)
    for f in files:
        f.unlink()
    logger.info("merged %d rows of %d rank file(s) into %s", len(new), len(files), out / SAMPLES)
    return rows + new


def clean_stale_tmp(out: Path) -> None:
    """Remove `.<file>.tmp-PID` files a killed rewrite left in `out` (call under the dir's lock)."""
    clean_stale_files(out, ".*.tmp-*")


# ---------------------------------------------------------------- sessions


def read_sessions(out: Path) -> list[dict]:
    """One record per session, ordered by id: its start record updated by its end record. A session
    with a start and no end was killed (`killed: True`); its rows are in samples.jsonl all the same."""
    merged: dict[int, dict] = {}
    for rec in read_jsonl(out / SESSIONS):
        event = rec.get("event")
        if event == "start":
            merged[rec["session"]] = {**rec, "killed": True, "completed": False}
        elif event == "end":
            merged.setdefault(rec["session"], {}).update(rec, killed=False)
        else:  # written before start records existed: one record per session, at its end
            merged[rec["session"]] = {**rec, "killed": False}
    return [merged[k] for k in sorted(merged)]


def start_session(out: Path, sessions: list[dict], rows: list[dict], **fields) -> dict:
    """Record a new session before it writes any row; its id is new to both sessions.jsonl and the rows
    (a killed session of an older format left rows but no record), so batch ids never repeat."""
    used = {s["session"] for s in sessions} | {r.get("session") for r in rows if isinstance(r.get("session"), int)}
    session = {"session": max(used, default=-1) + 1, "event": "start", "pid": os.getpid(), **fields}
    append_jsonl(out / SESSIONS, session)
    return dict(session)


def end_session(out: Path, session: dict) -> None:
    append_jsonl(out / SESSIONS, {**session, "event": "end"})


# ---------------------------------------------------------------- config + compatibility

# What makes two sessions' rows comparable: same weights, data and generation protocol. Scoring settings
# (bootstrap, BERTScore model, baseline) and --limit are recomputed per run and may change freely.
# Where the layers sit (--device-map, --max-memory) and the number of processes are not among them: a layer
# computes the same wherever its weights are held, and batches are those of a one-process run.
PROTOCOL_KEYS = ("task", "prompt", "max_new_tokens", "batch_size", "dtype", "device", "quant", "ocr_tokens", "engine",
                 "image_tokens", "token_method", "fuse", "attention")
# what a key meant in results written before it was recorded
PROTOCOL_DEFAULTS = {"fuse": False, "attention": "sdpa"}


def read_config(out: Path) -> dict | None:
    f = out / CONFIG
    return yaml.safe_load(f.read_text()) if f.exists() else None


def write_config(out: Path, config: dict) -> None:
    atomic_write_text(out / CONFIG, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def check_resumable(out: Path, old: dict, new: dict) -> None:
    """Refuse to mix rows from another checkpoint, dataset or generation protocol into `out`."""
    changes = []
    if old.get("checkpoint_sha256") != new["checkpoint_sha256"]:
        old_files, new_files = old.get("checkpoint_files") or {}, new["checkpoint_files"]
        differ = sorted(n for n in {*old_files, *new_files} if old_files.get(n) != new_files.get(n))
        what = ", ".join(differ) if old_files else "keyed by weights only before; re-run into a new --out"
        changes.append(f"checkpoint files ({what}; sha256 {str(old.get('checkpoint_sha256'))[:12]}… -> "
                       f"{new['checkpoint_sha256'][:12]}…)")
    if old.get("dataset_sha256") != new["dataset_sha256"]:
        changes.append("dataset (samples.jsonl sha256 differs)")
    old_p, new_p = old.get("generation", {}), new["generation"]
    old_p = {**PROTOCOL_DEFAULTS, **old_p}
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
