"""Stage-3 core (no Ray): STL and MTL-HPS classifiers and their weighted multi-task loss.

Tasks are named: "principal", and "auxiliary" (the discovered labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBackbone(nn.Module):
    """Small VGG-style net for 16-64 px images: 3 stages of (conv3x3-BN-ReLU) x 2 + max-pool, then global pooling."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in (width, 2 * width, 4 * width):
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)


class HardSharingNet(nn.Module):
    """MTL-HPS: one shared backbone, one linear head per task. With only the principal task, it is the STL baseline."""

    def __init__(self, n_classes: dict[str, int], width: int = 32):
        super().__init__()
        if "principal" not in n_classes:
            raise ValueError("a 'principal' task is required")
        self.backbone = ConvBackbone(width)
        self.heads = nn.ModuleDict({t: nn.Linear(self.backbone.out_dim, c) for t, c in n_classes.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.backbone(x)
        return {t: head(h) for t, head in self.heads.items()}


def build_mtl_model(kind: str, n_classes: dict[str, int], width: int) -> nn.Module:
    """'stl' keeps the principal head only; 'hps' has a head for every task."""
    if kind == "stl":
        return HardSharingNet({"principal": n_classes["principal"]}, width)
    if kind == "hps":
        return HardSharingNet(n_classes, width)
    raise ValueError(f"unknown MTL model '{kind}'")


def multitask_loss(logits: dict[str, Tensor], targets: dict[str, Tensor], weights: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
    """L = sum_t w_t CE(logits_t, y_t) over the tasks the model predicts; returns total and per-task CE."""
    per_task = {t: F.cross_entropy(out, targets[t]) for t, out in logits.items()}
    total = sum(weights[t] * ce for t, ce in per_task.items())
    return total, {t: ce.detach() for t, ce in per_task.items()}
