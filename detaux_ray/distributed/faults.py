"""Test-only fault injection for the training loops (config section `debug`)."""

from __future__ import annotations

import os
from pathlib import Path


def maybe_kill(kill_at: str, stage: str, epoch: int, step: int, rank: int, status_dir: str) -> None:
    """Kill this worker process (as a crash would) at stage:epoch:step, once per run directory.

    The marker file makes the restarted worker group run through the same point without dying again.
    """
    if not kill_at or rank != 0:
        return
    k_stage, k_epoch, k_step = kill_at.split(":")
    if (k_stage, int(k_epoch), int(k_step)) != (stage, epoch, step):
        return
    marker = Path(status_dir) / f"killed-{stage}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    print(f"[debug] killing rank 0 of '{stage}' at epoch {epoch} step {step}", flush=True)
    os._exit(1)
