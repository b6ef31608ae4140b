"""Tensor helpers every training stage uses: image dtype and layout, devices, mixed precision, threads."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def to_float_images(x: Tensor) -> Tensor:
    """uint8 NHWC (as stored) -> float NCHW in [0, 1], channels_last memory."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def autocast(device: torch.device, amp: str):
    """bfloat16 autocast when amp == "bf16" (a no-op context otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """Host -> device copy through pinned memory, non-blocking, when the device is a GPU."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def set_torch_threads(requested: int, workers_on_node: int) -> int:
    """Intra-op threads for a training worker: `requested`, or (0) this node's cores shared among its workers.

    Ray sets OMP_NUM_THREADS to a worker's whole CPUs (1 for 0.5 or 1 CPU), which leaves cores idle on a small
    machine where the data tasks are light.
    """
    import os

    n = requested or max(1, (os.cpu_count() or 1) // max(1, workers_on_node))
    torch.set_num_threads(n)
    return n
