"""`RecoverConfig`: every recovery option in one small dataclass that validates itself.

The CLI builds it from the flags it was given (its options default to "not given"), the library takes it
as is, and the manifest's `recover` step stores `to_dict()` so a checkpoint says how it was recovered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

METHODS = ("kd", "lora-kd", "projector")  # recovery.methods.METHODS holds the implementations
DTYPES = ("bfloat16", "float16", "float32")
# Options that change where or how fast a run goes, not what it computes: a resume may change them.
RUN_ONLY = ("device", "save_every", "cache_dir", "progress", "heldout")


@dataclass
class RecoverConfig:
    """How to distil a pruned student toward its teacher. Loss per answer token:
    `kd_temperature² · KL(teacher_T || student_T) + ce_weight · CE(teacher token) + hidden_weight · MSE`."""

    method: str = "kd"  # kd: language model + projector + lm_head; lora-kd: LoRA (merged) + projector; projector
    steps: int = 300
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int | None = None  # linear warm-up steps, then cosine to 0; None: 10 % of `steps`
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 1024  # prompt (image tokens included) + teacher answer, in tokens
    max_new_tokens: int = 64  # length cap of the teacher's greedy answers (the targets)
    lora_rank: int = 16
    lora_alpha: float | None = None  # None: 2 x lora_rank
    kd_temperature: float = 1.0
    ce_weight: float = 0.0  # cross-entropy on the teacher's tokens, added to the KL
    hidden_weight: float = 0.0  # normalised MSE between aligned decoder-layer outputs
    gradient_checkpointing: bool = False
    seed: int = 0  # data order (and LoRA init)
    device: str = "cpu"
    dtype: str | None = None  # None: the checkpoints' own dtype; bfloat16 on a GPU
    save_every: int | None = None  # write a resume state every N steps (beside --out, removed at the end)
    cache_dir: str | None = None  # teacher targets cache; None: $VLMSLIM_CACHE or ~/.cache/vlmslim
    heldout: tuple[str, ...] = field(default_factory=tuple)  # data dirs the recovery data must not overlap
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("steps", "batch_size", "max_length", "max_new_tokens", "lora_rank"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"--{_flag(name)} must be an integer >= 1, got {v!r}")
        for name in ("warmup", "save_every"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < (0 if name == "warmup" else 1)):
                raise ValueError(f"--{_flag(name)} must be an integer >= {0 if name == 'warmup' else 1}, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr!r}")
        if not self.kd_temperature > 0:
            raise ValueError(f"--kd-temperature must be > 0, got {self.kd_temperature!r}")
        for name in ("weight_decay", "ce_weight", "hidden_weight", "max_grad_norm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)!r}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"--lora-alpha must be > 0, got {self.lora_alpha!r}")
        if self.dtype not in (None, *DTYPES):
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self.heldout = tuple(str(h) for h in self.heldout)

    @property
    def warmup_steps(self) -> int:
        return self.steps // 10 if self.warmup is None else min(self.warmup, self.steps)

    @property
    def alpha(self) -> float:
        return 2.0 * self.lora_rank if self.lora_alpha is None else float(self.lora_alpha)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["heldout"] = list(self.heldout)
        return d

    def fingerprint(self) -> dict:
        """What must match for a resume state to continue this run: everything but `RUN_ONLY`."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_ONLY}


def _flag(name: str) -> str:
    return name.replace("_", "-")
