"""Where a model's weights live and how to wait for them: the one device synchronisation every clock uses."""

from __future__ import annotations

from typing import Callable

import torch


def sync(device: torch.device) -> None:
    """Block until `device` finished its queued work (a no-op on the CPU, which runs synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_devices(model) -> list[torch.device]:
    """The CUDA devices holding the model's parameters (several with device_map="auto")."""
    return sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=lambda d: d.index)


def main_device(model) -> torch.device:
    """Where inputs go and which device's clock counts: the first GPU holding part of the model (a device map
    may put the first parameters on the CPU), else where the parameters are."""
    devices = cuda_devices(model)
    return devices[0] if devices else next(model.parameters()).device


def device_sync(model) -> Callable[[], None]:
    """A no-argument sync of every CUDA device the model spans."""
    devices = cuda_devices(model)

    def sync_all() -> None:
        for d in devices:
            sync(d)

    return sync_all
