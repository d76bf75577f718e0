"""Data step: evaluation sets on disk in one local layout (see `layout.py`), read with `load()`.

Producers: `download` (registered hub sets or local copies of them), `import_captions` (own images +
captions), `make_synthetic` (the offline shapes set). Consumers: `load(DIR) -> LocalDataset`,
`select_subset` for seeded subsets.
"""

from vlmslim.data.importer import import_captions
from vlmslim.data.layout import TASK_NAMES, LocalDataset, Sample, load, select_subset
from vlmslim.data.sources import SOURCES, SourceSpec
from vlmslim.data.synthetic import SyntheticConfig, make_synthetic, vocabulary

__all__ = [
    "SOURCES", "TASK_NAMES", "DownloadConfig", "LocalDataset", "Sample", "SourceSpec", "SyntheticConfig",
    "download", "import_captions", "load", "make_synthetic", "select_subset", "vocabulary",
]


def __getattr__(name: str):
    # `datasets` (and pyarrow) take seconds to import and only `download` needs them: load on first use,
    # so `vlmslim --version`, the synthetic set and the GPU image (no `datasets`) stay light.
    if name in ("download", "DownloadConfig"):
        from vlmslim.data import downloader

        return getattr(downloader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
