"""Caption tokenization: pycocoevalcap's PTB tokenizer (Stanford CoreNLP jar), in one Java call.

Same command, options and punctuation filter as `pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer`,
so the tokens equal the library's; differences, on purpose:
- the temp file goes to the system temp dir, not into site-packages (often read-only);
- every character Java treats as a line break is replaced by a space (the library replaces only
  "\\n", so a caption containing e.g. "\\r" or U+2028 silently shifts all later captions there);
- the number of output lines is checked;
- each distinct sentence is tokenized once per process (`_MEMO`): a sweep scores the same references and
  predictions several times (the run, the paired comparison, the next variant), and every Java call costs
  a JVM start (~0.5 s). A line's tokens do not depend on its neighbours (`-preserveLines`; checked by
  tests/test_metrics.py on quotes, abbreviations and brackets), so a remembered line equals a fresh one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pycocoevalcap.tokenizer.ptbtokenizer as _ptb

from vlmslim.errors import BenchmarkError, JavaMissingError

logger = logging.getLogger(__name__)

PTB_JAR = Path(_ptb.__file__).with_name(_ptb.STANFORD_CORENLP_3_4_1_JAR)
PUNCTUATIONS = frozenset(_ptb.PUNCTUATIONS)
TOKENIZER_PTB = "PTB (Stanford CoreNLP 3.4.1 via pycocoevalcap, lowercased, punctuation removed)"
TOKENIZER_FALLBACK = "fallback-simple (Java missing)"

_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_FALLBACK_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

JAVA_HINT = (
    "pycocoevalcap's PTB tokenizer and METEOR 1.5 need a Java runtime (e.g. `apt-get install "
    "default-jre-headless`). Or opt in to the labelled fallback (simple Python tokenizer, no METEOR): "
    "allow_fallback=True (`vlmslim bench --allow-no-java`)."
)


def java_available() -> bool:
    return shutil.which("java") is not None


def require_java() -> str:
    """Path of `java`, or JavaMissingError with what to do."""
    java = shutil.which("java")
    if java is None:
        raise JavaMissingError(f"`java` not found on PATH. {JAVA_HINT}")
    return java


_MEMO: dict[str, str] = {}  # sentence -> its tokens, as `ptb_tokenize` returns them
_MEMO_MAX = 200_000


def ptb_tokenize(sentences: list[str]) -> list[str]:
    """PTB-tokenize every sentence (the ones this process has not tokenized yet in one JVM run); returns
    space-joined lowercase tokens, punctuation removed."""
    java = require_java()
    known = {s: _MEMO[s] for s in sentences if s in _MEMO}
    todo = list(dict.fromkeys(s for s in sentences if s not in known))
    if todo:
        known.update(zip(todo, _run_ptb(java, todo)))
        if len(_MEMO) + len(todo) > _MEMO_MAX:
            _MEMO.clear()
        _MEMO.update(known)
    return [known[s] for s in sentences]


def _run_ptb(java: str, sentences: list[str]) -> list[str]:
    text = "\n".join(_LINE_BREAKS.sub(" ", s) for s in sentences)
    fd, path = tempfile.mkstemp(prefix="vlmslim-ptb-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
        cmd = [java, "-cp", str(PTB_JAR), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", "-encoding", "utf-8", path]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    finally:
        os.remove(path)
    if proc.returncode != 0:
        raise BenchmarkError(f"PTB tokenizer failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}")
    lines = proc.stdout.decode("utf-8").split("\n")
    # -preserveLines keeps one output line per input line (empty ones included); a trailing "" may follow.
    if len(lines) == len(sentences) + 1 and lines[-1] == "":
        lines = lines[:-1]
    if len(lines) != len(sentences):
        raise BenchmarkError(f"PTB tokenizer returned {len(lines)} lines for {len(sentences)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in lines]


def simple_tokenize(sentences: list[str]) -> list[str]:
    """Pure-Python stand-in for the PTB tokenizer: lowercase word characters (apostrophes kept inside words)."""
    return [" ".join(_FALLBACK_TOKEN.findall(s.lower())) for s in sentences]


def tokenize_all(sentences: list[str], *, use_java: bool) -> list[str]:
    return ptb_tokenize(sentences) if use_java else simple_tokenize(sentences)
