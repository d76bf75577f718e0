"""Recovery: distil a pruned student back toward its unpruned teacher (KD, LoRA-KD merged, projector-only).

    from vlmslim.recovery import RecoverConfig, recover_checkpoint
    recover_checkpoint("ckpt/heads25", "demo", "data/train", "ckpt/heads25-kd", RecoverConfig(steps=300))

Targets are the teacher's own greedy answers (`targets.py`), the loss is token-level KD on them
(`losses.py`), the loop resumes after a kill (`train.py`), and the output is a plain checkpoint of the
student's shapes (`step.py`, through `vlmslim.checkpoint.save_verified`).
"""

from vlmslim.recovery.config import METHODS as METHOD_NAMES
from vlmslim.recovery.config import RecoverConfig
from vlmslim.recovery.methods import METHODS
from vlmslim.recovery.step import recover_checkpoint
from vlmslim.recovery.train import TrainResult, train, train_step

__all__ = ["METHODS", "METHOD_NAMES", "RecoverConfig", "TrainResult", "recover_checkpoint", "train", "train_step"]
