"""The manifest (`vlmslim.json`) every checkpoint carries, and the model card written from it.

Torch-free: a manifest is plain JSON — base model, ordered steps, per-layer architecture, census,
sizes, library versions and vlmslim's own git revision.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

from vlmslim import __version__
from vlmslim.errors import ModelLoadError

MANIFEST = "vlmslim.json"
FORMAT = "vlmslim-checkpoint/1"
_PACKAGE_DIR = Path(__file__).resolve().parent


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of a checkpoint dir, None when it has none; a clear error when it is unreadable."""
    f = Path(path) / MANIFEST
    if not f.exists():
        return None
    try:
        manifest = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{f} is not valid JSON ({e}); restore it or remove it to load the directory as a "
                             "plain HF model") from e
    problem = manifest_problem(manifest)
    if problem:
        raise ModelLoadError(f"{f} is not a vlmslim manifest: {problem}")
    return manifest


def manifest_problem(m) -> str | None:
    """What makes `m` not a vlmslim manifest (None when it is one)."""
    if not isinstance(m, dict):
        return f"expected a JSON object, got {type(m).__name__}"
    if not isinstance(m.get("base"), dict) or "model" not in m["base"]:
        return "no 'base' record with the base model"
    if not isinstance(m.get("steps", []), list):
        return "'steps' is not a list"
    if not m.get("stock_loadable", True) and not isinstance(m.get("architecture"), dict):
        return "not stock loadable but has no 'architecture' record"
    return None


def library_versions() -> dict[str, str | None]:
    out = {"python": platform.python_version(), "vlmslim": __version__}
    for pkg in ("torch", "transformers", "accelerate", "bitsandbytes", "safetensors"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_revision() -> str | None:
    """vlmslim's own source revision when it runs from a git checkout; None from an installed wheel, and
    None when the package dir merely sits inside some other repository (never record a foreign commit)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=_PACKAGE_DIR, capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if _PACKAGE_DIR.parent != top or not (top / "setup.cfg").is_file():
            return None  # the package is not the root of this checkout: another project's repo
        rev = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_manifest(source: str, config, prior: dict | None = None, seed: int | None = None) -> dict:
    """The manifest of a step's output: the input's manifest carried forward, or a fresh base record."""
    if prior is not None:
        manifest = json.loads(json.dumps(prior))  # deep copy
    else:
        manifest = {
            "format": FORMAT,
            "base": {"model": source, "model_type": config.model_type,
                     "revision": getattr(config, "_commit_hash", None)},
            "steps": [],
            "architecture": None,
            "stock_loadable": True,
        }
    manifest["seed"] = seed
    return manifest


def model_card(manifest: dict) -> str:
    base = manifest["base"]
    lines = [
        f"# vlmslim checkpoint of `{base['model']}`",
        "",
        f"Family `{manifest.get('family')}`; created {manifest.get('created')} by vlmslim "
        f"{manifest['library_versions']['vlmslim']} (git {manifest.get('vlmslim_git_revision')}).",
        "",
        "## Steps applied",
        "",
    ]
    steps = manifest.get("steps") or []
    lines += [f"{i + 1}. `{s.get('kind')}` {json.dumps(s.get('params', {}), sort_keys=True)}"
              for i, s in enumerate(steps)] or ["none (base model)"]
    if manifest.get("training"):
        t = manifest["training"]
        lines += ["", "## Training", "", f"Trained from scratch on {t.get('device_name')} in {t.get('train_seconds')} s: "
                  f"{json.dumps(t.get('config'), sort_keys=True)}; final loss {t.get('final_loss'):.3g}; "
                  f"held-out exact match {t.get('heldout_exact_match')} ({t.get('heldout')})."]
    lines += ["", "## Census", "", "| component | params | MB | linear layers by precision |", "|---|---:|---:|---|"]
    for comp, c in manifest["census"]["components"].items():
        kinds = ", ".join(f"{k}: {v}" for k, v in c["linear"].items()) or "-"
        lines.append(f"| {comp} | {c['params']:,} | {c['bytes'] / 1e6:.2f} | {kinds} |")
    loader = ("`AutoModelForImageTextToText.from_pretrained(path)` or `vlmslim.load_model(path)`"
              if manifest.get("stock_loadable", True) else
              "`vlmslim.load_model(path)` only (the pruned shapes are not expressible in the stock config)")
    lines += ["", f"Bytes on disk (weights + processor): {manifest['bytes_on_disk']:,}", "", f"Load with {loader}.", ""]
    return "\n".join(lines)
