"""Expected failures. The CLI turns every `VlmslimError` into a one-line message and exit code 1."""


class VlmslimError(Exception):
    """Base class: an input or state the user can fix; the message says how."""


class ModelLoadError(VlmslimError):
    """A model path/hub id cannot be loaded (missing, offline, not a model, unsupported family)."""


class UnsupportedFamilyError(VlmslimError):
    """The model's `model_type` has no adapter in `vlmslim.families.FAMILIES`."""


class OutputExistsError(VlmslimError):
    """The output directory exists and `overwrite` was not given."""


class DataError(VlmslimError):
    """A dataset directory or source is missing, empty, corrupt or of the wrong task."""


class PruningError(VlmslimError):
    """A pruning request that would leave an inconsistent or empty model."""


class QuantizationError(VlmslimError):
    """A quantization request that cannot be honoured (recipe, target or shapes)."""


class BenchmarkError(VlmslimError):
    """A benchmark configuration or results directory that cannot be used."""


class FiguresError(VlmslimError):
    """Results directories that cannot be plotted together (not a results dir, mixed runs, no metric)."""


class JavaMissingError(BenchmarkError):
    """`java` is not on PATH: the PTB tokenizer and METEOR 1.5 (pycocoevalcap jars) cannot run."""


class OutputBusyError(VlmslimError):
    """Another process is writing the same output (it holds the output's lock)."""


class OutputWriteError(VlmslimError):
    """The output location cannot be written (read-only file system, no permission, disk full)."""


class RecoveryError(VlmslimError):
    """A recovery (distillation) request that cannot run: mismatched teacher/student, quantized student,
    recovery data that overlaps held-out data, or a resume state of another run."""


class RecipeError(VlmslimError):
    """A sweep recipe that does not validate; the message starts with `FILE:LINE: key.path:`."""
