"""`PruneConfig`: every pruning option in one small dataclass that validates itself.

The CLI builds it from its flags, the library API takes it as is, and the manifest step stores
`asdict(config)` so a checkpoint says exactly how it was made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vlmslim.pruning.importance import HEAD_IMPORTANCE, NEURON_IMPORTANCE
from vlmslim.pruning.select import ALLOCATIONS

HEAD_MODES = ("groups", "query")
# Calibration samples when --calibration-samples is not given; a smaller set is used whole (with a
# warning), while an explicit count larger than the set is refused (`calibrate.calibration_count`).
DEFAULT_CALIBRATION_SAMPLES = 32


def parse_drop_layers(text: str | int | None) -> int | tuple[int, ...]:
    """`--drop-layers`: "3" drops the 3 most redundant layers, "20,21" drops exactly those layers."""
    if text is None or text == "":
        return 0
    if isinstance(text, int):
        return text
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError as e:
        raise ValueError(f"--drop-layers must be a count N or a comma list of layer indices, got {text!r}") from e
    if "," in str(text):
        return tuple(sorted(set(values)))
    return values[0]


@dataclass
class PruneConfig:
    """What to remove and how to score it. Ratios are fractions *removed* (0 <= R < 1)."""

    glu: float = 0.0  # fraction of each decoder layer's GLU-MLP neurons removed
    heads: float = 0.0  # fraction of attention heads removed (see head_mode)
    head_mode: str = "groups"  # groups: whole KV groups (shrinks the KV cache); query: query heads inside groups
    drop_layers: int | tuple[int, ...] = 0  # N most redundant layers (needs calibration) or explicit indices
    trim_vision: bool = False  # drop vision layers after the one the projector reads (vision_feature_layer)
    importance: str = "maw"  # neuron criterion, a key of importance.NEURON_IMPORTANCE
    head_importance: str = "o_norm"  # head criterion, a key of importance.HEAD_IMPORTANCE
    round_to: int = 64  # kept MLP widths are multiples of this (bnb 4-bit / tensor-core fast paths)
    calibration: str | None = None  # a `vlmslim data` directory
    calibration_samples: int | None = None  # None: DEFAULT_CALIBRATION_SAMPLES, or the whole set if smaller
    seed: int = 0  # picks the calibration subset
    # How --glu / --heads spread over layers (a key of select.ALLOCATIONS). The budget is what `uniform`
    # keeps; the others move units between layers, never removing more than max_layer_ratio of a layer.
    allocation: str = "uniform"
    max_layer_ratio: float = 0.9
    teacher_tokens: int = 32  # max new tokens of the unpruned model's greedy answers (Taylor / sensitivity loss)

    def __post_init__(self) -> None:
        for name in ("glu", "heads"):
            r = getattr(self, name)
            if not isinstance(r, (int, float)) or not 0 <= r < 1:
                raise ValueError(f"--{name} must be a fraction removed in [0, 1), got {r!r}")
            setattr(self, name, float(r))
        if self.head_mode not in HEAD_MODES:
            raise ValueError(f"--head-mode must be one of {', '.join(HEAD_MODES)}, got {self.head_mode!r}")
        if self.importance not in NEURON_IMPORTANCE:
            raise ValueError(f"--importance must be one of {', '.join(sorted(NEURON_IMPORTANCE))}, "
                             f"got {self.importance!r}")
        if self.head_importance not in HEAD_IMPORTANCE:
            raise ValueError(f"--head-importance must be one of {', '.join(sorted(HEAD_IMPORTANCE))}, "
                             f"got {self.head_importance!r}")
        if isinstance(self.drop_layers, (list, tuple)):
            self.drop_layers = tuple(sorted(set(int(i) for i in self.drop_layers)))
            if not self.drop_layers:
                self.drop_layers = 0
            elif self.drop_layers[0] < 0:
                raise ValueError(f"--drop-layers indices must be >= 0, got {list(self.drop_layers)}")
        elif not isinstance(self.drop_layers, int) or self.drop_layers < 0:
            raise ValueError(f"--drop-layers must be a count >= 0 or a list of indices, got {self.drop_layers!r}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"--round-to must be an integer >= 1, got {self.round_to!r}")
        if self.calibration_samples is not None and (not isinstance(self.calibration_samples, int)
                                                     or self.calibration_samples < 1):
            raise ValueError(f"--calibration-samples must be >= 1, got {self.calibration_samples!r}")

        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"--allocation must be one of {', '.join(sorted(ALLOCATIONS))}, got {self.allocation!r}")
        if not isinstance(self.max_layer_ratio, (int, float)) or not 0 < self.max_layer_ratio < 1:
            raise ValueError(f"--max-layer-ratio must be a fraction removed in (0, 1), got {self.max_layer_ratio!r}")
        self.max_layer_ratio = float(self.max_layer_ratio)
        if self.allocation != "uniform":
            over = [f"--{name} {getattr(self, name):g}" for name in ("glu", "heads")
                    if getattr(self, name) > self.max_layer_ratio]
            if over:
                raise ValueError(f"--max-layer-ratio {self.max_layer_ratio:g} is below {' and '.join(over)}: no "
                                 "allocation can then keep the budget; raise --max-layer-ratio")
        if not isinstance(self.teacher_tokens, int) or self.teacher_tokens < 1:
            raise ValueError(f"--teacher-tokens must be >= 1, got {self.teacher_tokens!r}")

    @property
    def is_noop(self) -> bool:
        return not (self.glu or self.heads or self.drop_layers or self.trim_vision)

    @property
    def calibration_reason(self) -> str | None:
        """The option that needs calibration activations, or None when weights alone suffice."""

        if self.glu and NEURON_IMPORTANCE[self.importance].needs_calibration:
            return f"--importance {self.importance}"
        if self.heads and HEAD_IMPORTANCE[self.head_importance].needs_calibration:
            return f"--head-importance {self.head_importance}"
        if isinstance(self.drop_layers, int) and self.drop_layers > 0:
            return "--drop-layers N (layer redundancy is measured on calibration data)"
        if self.allocation != "uniform" and (self.glu or self.heads):
            return f"--allocation {self.allocation}"
        return None

    @property
    def needs_teacher(self) -> bool:
        """Whether the unpruned model's greedy answers are needed (gradient criteria, sensitivity allocation)."""

        return bool((self.glu and NEURON_IMPORTANCE[self.importance].needs_gradients)
                    or (self.heads and HEAD_IMPORTANCE[self.head_importance].needs_gradients)
                    or ((self.glu or self.heads) and ALLOCATIONS[self.allocation].needs == "sensitivity"))

    @property
    def needs_calibration(self) -> bool:
        return self.calibration_reason is not None

    def unused_criteria(self, given: set[str]) -> str | None:
        """Why a criterion the user named would score nothing (`given`: the option names set), else None.
        `importance` scores MLP neurons only; head pruning has its own `head_importance`."""
        if "importance" in given and not self.glu:
            return ("--importance scores MLP neurons: it needs --glu R (attention heads are scored by "
                    "--head-importance with --heads R)")
        if "head_importance" in given and not self.heads:
            return "--head-importance scores attention heads: it needs --heads R"
        return None

    def missing_calibration_message(self) -> str:
        return f"{self.calibration_reason} needs calibration data: pass --calibration DIR (a `vlmslim data` directory)"

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["drop_layers"], tuple):
            d["drop_layers"] = list(d["drop_layers"])
        return d
