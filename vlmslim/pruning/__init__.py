"""Structured pruning of VLM decoders: score (importance) -> select (kept indices) -> cut (surgery).

    from vlmslim.pruning import PruneConfig, prune
    model, step = prune(model, processor, PruneConfig(glu=0.3, heads=0.25))
"""

from vlmslim.pruning.config import PruneConfig
from vlmslim.pruning.importance import HEAD_IMPORTANCE, NEURON_IMPORTANCE
from vlmslim.pruning.prune import prune, record_step
from vlmslim.pruning.step import prune_checkpoint

__all__ = ["HEAD_IMPORTANCE", "NEURON_IMPORTANCE", "PruneConfig", "prune", "prune_checkpoint", "record_step"]
