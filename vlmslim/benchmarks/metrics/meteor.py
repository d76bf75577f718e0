"""METEOR 1.5 (pycocoevalcap's jar): per-segment sufficient statistics from the jar, aggregation in numpy.

How pycocoevalcap forms its METEOR score: for each image it sends `SCORE ||| ref1 ||| ... ||| hyp`
to the jar (`-stdio -l en -norm`), which aligns the hypothesis with every reference, keeps the
statistics of the best-scoring reference and prints them as 23 numbers:
    testLen refLen testFuncWords refFuncWords, then for each module (exact, stem, synonym,
    paraphrase): testContent refContent testFunction refFunction matches, then chunks,
    testWordMatches refWordMatches.
Then `EVAL ||| stats_1 ||| ... ||| stats_n` makes the jar *sum* the statistics (MeteorStats.addStats;
one quirk: a segment whose hypothesis and reference match completely in one chunk adds 0 chunks)
and apply MeteorScorer.computeMetrics to the sums. So the corpus score is not the mean of segment
scores, and a resample's score is computeMetrics(counts @ stats), reproduced below in numpy with
the jar's parameters for `-l en` (alpha 0.85, beta 0.2, gamma 0.6, delta 0.75; module weights
1.0 0.6 0.8 0.6) and its operation order.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pycocoevalcap.meteor.meteor as _meteor

from vlmslim.benchmarks.metrics.tokenize import require_java
from vlmslim.errors import BenchmarkError

logger = logging.getLogger(__name__)

METEOR_JAR = Path(_meteor.__file__).with_name(_meteor.METEOR_JAR)
ALPHA, BETA, GAMMA, DELTA = 0.85, 0.2, 0.6, 0.75
MODULE_WEIGHTS = (1.0, 0.6, 0.8, 0.6)
N_STATS = 23
NOTE = "METEOR 1.5 (pycocoevalcap jar, -l en -norm); corpus score from summed segment statistics"

# column indices in the 23-number statistics line
TEST_LEN, REF_LEN, TEST_FUNC, REF_FUNC = 0, 1, 2, 3
CHUNKS, TEST_WORD_MATCHES, REF_WORD_MATCHES = 20, 21, 22


def _module_cols(offset: int) -> list[int]:
    return [4 + 4 * m + offset for m in range(len(MODULE_WEIGHTS))]


TEST_CONTENT, REF_CONTENT, TEST_FUNCTION, REF_FUNCTION = (_module_cols(o) for o in range(4))


def score_line(hyp: str, refs: list[str]) -> str:
    """The exact SCORE line pycocoevalcap's `Meteor._stat` sends."""
    hyp = hyp.replace("|||", "").replace("  ", " ")
    return " ||| ".join(("SCORE", " ||| ".join(refs), hyp))


class MeteorJar:
    """A running `meteor-1.5.jar -stdio` process. Start it early: the JVM needs ~6 s to load paraphrases."""

    def __init__(self) -> None:
        java = require_java()
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [java, "-jar", "-Xmx2G", str(METEOR_JAR), "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=METEOR_JAR.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="meteor")
        self._pending: list[Future] = []

    def __enter__(self) -> MeteorJar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if any(not f.done() for f in self._pending):
            # leaving early (an error elsewhere): stop the JVM so the I/O threads see EOF / a broken pipe
            self._proc.kill()
        self._pool.shutdown(wait=True)
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass  # the JVM already exited; its stderr is reported by the reader
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()

    def submit(self, hyps: list[str], refs: list[list[str]]) -> Future:
        """Start scoring in background threads; `.result()` is the (n, 23) statistics matrix."""
        return self.submit_lines([score_line(h, r) for h, r in zip(hyps, refs)])

    def submit_lines(self, lines: list[str]) -> Future:
        """`submit` of ready-made `score_line`s."""
        # writing and reading in separate threads: the pipes would deadlock if we wrote everything first
        self._pending = [self._pool.submit(self._write, lines), self._pool.submit(self._read, len(lines))]
        return self._pending[1]

    def stats(self, hyps: list[str], refs: list[list[str]]) -> np.ndarray:
        return self.submit(hyps, refs).result()

    def _write(self, lines: list[str]) -> None:
        try:
            for line in lines:
                self._proc.stdin.write((line + "\n").encode("utf-8"))
            self._proc.stdin.flush()
        except BrokenPipeError:
            logger.debug("METEOR jar closed its input early")  # the reader raises with the jar's stderr

    def _read(self, n: int) -> np.ndarray:
        out = np.empty((n, N_STATS))
        for i in range(n):
            line = self._proc.stdout.readline().decode("utf-8").strip()
            fields = line.split()
            if len(fields) != N_STATS:
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace")[-800:]
                raise BenchmarkError(f"METEOR jar gave {line!r} for segment {i}; stderr: {err}")
            out[i] = [float(x) for x in fields]
        return out


# A segment's statistics depend on its SCORE line alone (hypothesis + references, the jar scores each line on
# its own), so one process remembers them: a sweep's paired differences and its variants that repeat the
# baseline's captions then skip the ~4 s JVM start. Bounded: cleared when it reaches _MEMO_MAX lines.
_MEMO: dict[str, np.ndarray] = {}
_MEMO_MAX = 500_000


def unseen(lines: list[str]) -> list[str]:
    """The distinct lines of `lines` whose statistics this process has not computed yet, in first-seen order."""
    return list(dict.fromkeys(line for line in lines if line not in _MEMO))


def remember(lines: list[str], stats: np.ndarray) -> None:
    if len(_MEMO) + len(lines) > _MEMO_MAX:
        _MEMO.clear()
    _MEMO.update(zip(lines, stats))


def recall(lines: list[str]) -> np.ndarray:
    """(n, 23) statistics of lines all `remember`ed."""
    return np.stack([_MEMO[line] for line in lines]) if lines else np.empty((0, N_STATS))


def aggregate(stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sum segment statistics under each row of counts, as MeteorStats.addStats: (B, n) x (n, 23) -> (B, 23)."""
    test_total = stats[:, TEST_CONTENT + TEST_FUNCTION].sum(axis=1)
    ref_total = stats[:, REF_CONTENT + REF_FUNCTION].sum(axis=1)
    perfect = (test_total == stats[:, TEST_LEN]) & (ref_total == stats[:, REF_LEN]) & (stats[:, CHUNKS] == 1.0)
    summable = stats.copy()
    summable[perfect, CHUNKS] = 0.0  # the jar's addStats skips the single chunk of a perfect match
    return counts @ summable


def compute_metrics(s: np.ndarray) -> np.ndarray:
    """MeteorScorer.computeMetrics on (..., 23) statistics, same operation order; returns scores (...)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        test_wlen = DELTA * (s[..., TEST_LEN] - s[..., TEST_FUNC]) + (1.0 - DELTA) * s[..., TEST_FUNC]
        ref_wlen = DELTA * (s[..., REF_LEN] - s[..., REF_FUNC]) + (1.0 - DELTA) * s[..., REF_FUNC]
        test_wm = np.zeros(s.shape[:-1])
        ref_wm = np.zeros(s.shape[:-1])
        for m, w in enumerate(MODULE_WEIGHTS):
            test_wm = test_wm + s[..., TEST_CONTENT[m]] * w * DELTA
        for m, w in enumerate(MODULE_WEIGHTS):
            ref_wm = ref_wm + s[..., REF_CONTENT[m]] * w * DELTA
        for m, w in enumerate(MODULE_WEIGHTS):
            test_wm = test_wm + s[..., TEST_FUNCTION[m]] * w * (1.0 - DELTA)
        for m, w in enumerate(MODULE_WEIGHTS):
            ref_wm = ref_wm + s[..., REF_FUNCTION[m]] * w * (1.0 - DELTA)
        precision = test_wm / test_wlen
        recall = ref_wm / ref_wlen
        fmean = 1.0 / (((1.0 - ALPHA) / precision) + (ALPHA / recall))
        # the jar re-derives total matches from the stage columns when it parses a stats line
        test_total = np.zeros(s.shape[:-1])
        ref_total = np.zeros(s.shape[:-1])
        for m in range(len(MODULE_WEIGHTS)):
            test_total = test_total + s[..., TEST_CONTENT[m]] + s[..., TEST_FUNCTION[m]]
            ref_total = ref_total + s[..., REF_CONTENT[m]] + s[..., REF_FUNCTION[m]]
        perfect = (test_total == s[..., TEST_LEN]) & (ref_total == s[..., REF_LEN]) & (s[..., CHUNKS] == 1.0)
        frag = np.where(perfect, 0.0, s[..., CHUNKS] / ((s[..., TEST_WORD_MATCHES] + s[..., REF_WORD_MATCHES]) / 2))
        score = fmean * (1.0 - GAMMA * np.power(frag, BETA))
    return np.where(np.isnan(score), 0.0, np.maximum(score, 0.0))


def corpus(stats: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    return {"meteor": compute_metrics(aggregate(stats, counts))}


def per_sample(stats: np.ndarray) -> dict[str, np.ndarray]:
    """Segment scores (what the jar prints per segment in EVAL)."""
    return {"meteor": compute_metrics(stats)}
