"""Spot-check gallery: a seeded random sample of inputs, every checkpoint's prediction side by side.

The sample is drawn uniformly (seeded) from the ids present in every run, so it is representative; it
is then *ordered* by the worst per-sample drop versus the baseline so regressions are read first.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, UnidentifiedImageError

from vlmslim.figures.runs import Run, finite_or_none, load_samples
from vlmslim.figures.style import metric_label

logger = logging.getLogger(__name__)

THUMBNAIL_PX = 384


@dataclass
class Prediction:
    run: str
    text: str
    score: Optional[float]
    is_baseline: bool


@dataclass
class SpotSample:
    id: str
    image: Optional[Path]
    question: Optional[str]
    references: list[str]
    predictions: list[Prediction]
    drop: Optional[float]  # baseline score minus the worst other run's score; None without scores
    worst: Optional[str] = None  # the run with that worst score

    @property
    def headline(self) -> str:
        return "" if self.drop is None else f"worst Δ vs baseline {0.0 - self.drop:+.3f} ({self.worst})"  # 0.0 - x: no "-0.000"


def _resolve_image(row: dict, run: Run) -> Optional[Path]:
    value = row.get("image")
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute() and run.data_dir is not None:
        path = run.data_dir / path
    return path if path.is_file() else None


def select_samples(runs: Sequence[Run], baseline: Run, metric: str, n: int, seed: int) -> list[SpotSample]:
    """`n` seeded samples common to all runs with samples.jsonl, worst drop vs baseline first."""
    if n <= 0:
        return []
    tables = {}
    for run in runs:
        rows = load_samples(run)
        if rows is None:
            logger.warning("%s has no samples.jsonl; left out of the spot check", run.dir)
        else:
            tables[run.name] = rows
    if baseline.name not in tables:
        logger.warning("the baseline %s has no samples.jsonl; skipping the spot check", baseline.name)
        return []
    common = sorted(set.intersection(*(set(rows) for rows in tables.values())))
    if not common:
        logger.warning("no sample id is common to all runs; skipping the spot check")
        return []
    picked = random.Random(seed).sample(common, min(n, len(common)))
    members = [r for r in runs if r.name in tables]
    samples = []
    for sample_id in picked:
        base_row = tables[baseline.name][sample_id]
        preds = [
            Prediction(run.name, str(tables[run.name][sample_id].get("prediction", "")),
                       finite_or_none((tables[run.name][sample_id].get("scores") or {}).get(metric)), run is baseline)
            for run in members
        ]
        base_score = next(p.score for p in preds if p.is_baseline)
        others = [p for p in preds if not p.is_baseline and p.score is not None]
        worst = min(others, key=lambda p: p.score) if base_score is not None and others else None
        drop = None if worst is None else base_score - worst.score
        image = _resolve_image(base_row, baseline)
        if image is None:
            logger.warning("sample %s: image %r not found (data_dir %s)", sample_id, base_row.get("image"), baseline.data_dir)
        refs = base_row.get("references") or []
        samples.append(SpotSample(sample_id, image, base_row.get("question"), [str(r) for r in refs], preds, drop,
                                  worst.run if worst else None))
    if all(s.drop is None for s in samples):
        logger.warning("no per-sample %r scores in samples.jsonl; spot check kept in sampled order", metric)
    # Stable sort: samples without a drop keep their seeded order at the end.
    samples.sort(key=lambda s: (s.drop is None, -(s.drop or 0.0)))
    return samples


def thumbnail_jpeg(path: Optional[Path]) -> Optional[bytes]:
    """A JPEG thumbnail (≤ THUMBNAIL_PX per side) so the gallery stays small; None if unreadable."""
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            return buf.getvalue()
    except (UnidentifiedImageError, OSError) as e:
        logger.warning("cannot read image %s (%s); shown as missing", path, e)
        return None


def _fmt_score(score: Optional[float]) -> str:
    return "–" if score is None else f"{score:.3f}"


def _delta(pred: Prediction, base: Optional[float]) -> Optional[float]:
    return None if pred.is_baseline or pred.score is None or base is None else pred.score - base


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222}
section{border-top:1px solid #ddd;padding:1em 0}
.top{display:flex;gap:1.5em;align-items:flex-start}
img{width:320px;border-radius:4px;image-rendering:auto}
.missing{width:320px;height:200px;background:#eee;display:flex;align-items:center;justify-content:center;color:#888}
table{border-collapse:collapse;width:100%;margin-top:.8em}
th,td{border-bottom:1px solid #eee;padding:.35em .6em;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.base{background:#eef4fb;font-weight:600}
.worse{color:#b2182b}.better{color:#2166ac}.meta{color:#666;font-size:.9em}
"""


def spotcheck_html(samples: Sequence[SpotSample], metric: str, context: str, seed: int) -> str:
    """Self-contained HTML: images inlined as data URIs, every text escaped."""
    e = html.escape
    label = e(metric_label(metric))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Spot check: {label}</title><style>{_CSS}</style></head><body>",
        f"<h1>Spot check: {len(samples)} samples</h1>",
        f"<p class='meta'>{e(context)}<br>Drawn at random (seed {seed}) from the ids present in every run; "
        f"ordered by the largest per-sample {label} drop of any checkpoint versus the baseline.</p>",
    ]
    for k, s in enumerate(samples, 1):
        jpeg = thumbnail_jpeg(s.image)
        img = (f"<img alt='{e(s.id)}' src='data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}'>" if jpeg
               else "<div class='missing'>image not found</div>")
        drop = f" · {s.headline}" if s.headline else ""
        question = f"<p><b>Question:</b> {e(s.question)}</p>" if s.question else ""
        refs = "".join(f"<li>{e(r)}</li>" for r in s.references)
        base = next((p.score for p in s.predictions if p.is_baseline), None)
        rows = []
        for p in s.predictions:
            d = _delta(p, base)
            cls = "" if d is None or d == 0 else ("worse" if d < 0 else "better")
            rows.append(f"<tr class='{'base' if p.is_baseline else ''}'><td>{e(p.run)}{' (baseline)' if p.is_baseline else ''}</td>"
                        f"<td>{e(p.text)}</td><td class='num'>{_fmt_score(p.score)}</td>"
                        f"<td class='num {cls}'>{'' if d is None else f'{d:+.3f}'}</td></tr>")
        parts.append(
            f"<section><h2>{k}. <code>{e(s.id)}</code><span class='meta'>{e(drop)}</span></h2>"
            f"<div class='top'>{img}<div>{question}<p><b>References</b></p><ul>{refs}</ul></div></div>"
            f"<table><tr><th>Checkpoint</th><th>Prediction</th><th>{label}</th><th>Δ vs baseline</th></tr>{''.join(rows)}</table></section>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def write_spotcheck_md(samples: Sequence[SpotSample], out_dir: Path, metric: str, context: str, seed: int) -> Path:
    """spotcheck.md with thumbnails copied to `spotcheck_images/` (relative links keep the dir movable)."""
    image_dir = out_dir / "spotcheck_images"
    label = metric_label(metric)
    lines = [f"# Spot check: {len(samples)} samples", "", context, "",
             f"Drawn at random (seed {seed}) from the ids present in every run; ordered by the largest per-sample "
             f"{label} drop of any checkpoint versus the baseline.", ""]
    for k, s in enumerate(samples, 1):
        drop = f" ({_md_cell(s.headline)})" if s.headline else ""
        lines += [f"## {k}. `{s.id}`{drop}", ""]
        jpeg = thumbnail_jpeg(s.image)
        if jpeg:
            image_dir.mkdir(exist_ok=True)
            name = f"{k:03d}_{re.sub(r'[^A-Za-z0-9._-]', '_', s.id)[:40]}.jpg"
            (image_dir / name).write_bytes(jpeg)
            lines += [f"![{_md_cell(s.id)}](spotcheck_images/{name})", ""]
        else:
            lines += ["*(image not found)*", ""]
        if s.question:
            lines += [f"**Question:** {_md_cell(s.question)}", ""]
        lines += ["**References:**", ""] + [f"- {_md_cell(r)}" for r in s.references] + [""]
        lines += [f"| Checkpoint | Prediction | {label} | Δ vs baseline |", "|---|---|---:|---:|"]
        base = next((p.score for p in s.predictions if p.is_baseline), None)
        for p in s.predictions:
            d = _delta(p, base)
            name = f"**{_md_cell(p.run)} (baseline)**" if p.is_baseline else _md_cell(p.run)
            lines.append(f"| {name} | {_md_cell(p.text)} | {_fmt_score(p.score)} | {'' if d is None else f'{d:+.3f}'} |")
        lines.append("")
    path = out_dir / "spotcheck.md"
    path.write_text("\n".join(lines))
    return path
