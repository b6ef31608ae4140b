"""Test-only fault injection for the training loops (config section `debug`)."""

from __future__ import annotations

import os

from .status import mark_once


def maybe_kill(kill_at: str, stage: str, epoch: int, step: int, rank: int, board) -> None:
    """Kill this worker process (as a crash would) at stage:epoch:step, once per fit.

    The mark on the fit's status board makes the restarted worker group run through the same point without dying
    again (on whichever node it restarts).
    """
    if not kill_at or rank != 0:
        return
    k_stage, k_epoch, k_step = kill_at.split(":")
    if (k_stage, int(k_epoch), int(k_step)) != (stage, epoch, step):
        return
    if not mark_once(board, f"killed-{stage}"):
        return
    print(f"[debug] killing rank 0 of '{stage}' at epoch {epoch} step {step}", flush=True)
    os._exit(1)


def make_latent_constant(model) -> None:
    """Make every subspace but alpha constant, as the adversary's confusion term leaves them on `digits` after a
    long warm-up (docs/studies/2026-12-05-nuisance-collapse.md): each projector's first layer zeroed, so that
    s_j = b2_j for every image (debug.constant_latent)."""
    import torch

    with torch.no_grad():
        for j in range(model.k):
            if j != model.alpha:
                model.projectors.w1[j].zero_()
                model.projectors.b1[j].zero_()
