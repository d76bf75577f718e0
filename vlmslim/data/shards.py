"""A split stored as parquet shards (a hub repo, or a local copy of one): which files are the split, and
which of them a seeded subset needs.

`datasets.load_dataset(repo, split=S)` downloads and prepares every split of the repo (COCO-Caption2017:
6.6 GB of test shards next to the 0.8 GB val split). Resolving the split's own files from the repo's
file list and reading only those avoids that. With `--limit`, the subset stays a seeded draw over the
*whole* split (`select_subset`), so it does not depend on how the split is sharded; the shards' row
counts come from their parquet footers (a few KB each), and only shards holding a selected row are read.
"""

from __future__ import annotations

import fnmatch
import re
from bisect import bisect_right
from itertools import accumulate
from typing import Iterable


def split_files(files: Iterable[str], pattern: str, split: str) -> list[str]:
    """The repo files of `split`, sorted (shard order): `pattern` is e.g. "data/{split}-*.parquet"."""
    glob = pattern.format(split=split)
    return sorted(f for f in files if fnmatch.fnmatchcase(f, glob))


def splits_in(files: Iterable[str], pattern: str) -> list[str]:
    """The split names that `pattern` finds among `files` (for "unknown split" messages)."""
    head, tail = pattern.split("{split}")
    regex = re.compile(re.escape(head).replace(r"\*", "[^/]*") + "(?P<split>[^/]+?)"
                       + re.escape(tail).replace(r"\*", "[^/]*") + "$")
    return sorted({m["split"] for f in files if (m := regex.match(f))})


def plan_shards(counts: list[int], indices: list[int]) -> tuple[list[int], list[int]]:
    """Which shards hold the selected split rows, and where those rows sit once the needed shards are
    read back to back: `counts[k]` rows in shard k, `indices` are row numbers of the whole split.

    counts [4, 4, 4], indices [1, 9] -> shards [0, 2], positions [1, 5] (row 9 is row 1 of shard 2,
    which follows shard 0's 4 rows).
    """
    starts = [0, *accumulate(counts)]  # starts[k] = first split row of shard k; starts[-1] = total
    if any(not 0 <= i < starts[-1] for i in indices):
        raise ValueError(f"row numbers must lie in [0, {starts[-1]}), got {indices}")
    shard_of = [bisect_right(starts, i) - 1 for i in indices]
    needed = sorted(set(shard_of))
    offset, acc = {}, 0
    for k in needed:
        offset[k], acc = acc, acc + counts[k]
    return needed, [i - starts[k] + offset[k] for i, k in zip(indices, shard_of)]
