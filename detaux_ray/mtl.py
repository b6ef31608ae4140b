"""Stage-3 core (no Ray): STL, MTL-HPS and NDDR-CNN classifiers, fixed and uncertainty loss weighting.

Tasks are named: "principal", and "auxiliary" (the discovered labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2))


class ConvBackbone(nn.Module):
    """Small VGG-style net for 16-64 px images: 3 stages of (conv3x3-BN-ReLU) x 2 + max-pool, then global pooling."""

    def __init__(self, width: int = 32):
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.stages = nn.ModuleList(_stage(c_in, c) for c_in, c in zip((3,) + widths[:-1], widths))
        self.widths = widths
        self.out_dim = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return pool(x)


def pool(x: Tensor) -> Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


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


class NDDRLayer(nn.Module):
    """Neural discriminative dimensionality reduction (Gao et al., CVPR 2019) for T tasks of C channels each.

    out_t = ReLU(BN(W_t * concat(f_1, ..., f_T))), W_t a 1x1 conv (T*C -> C) initialised to `own` times the identity
    on task t's block and (1 - own) / (T - 1) times the identity on the others: near identity at the start.
    """

    def __init__(self, n_tasks: int, channels: int, own: float = 0.9):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(n_tasks * channels, channels, 1, bias=False) for _ in range(n_tasks))
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(n_tasks))
        eye = torch.eye(channels)
        other = (1.0 - own) / max(n_tasks - 1, 1)
        with torch.no_grad():
            for t, conv in enumerate(self.convs):
                blocks = [eye * (own if s == t else other) for s in range(n_tasks)]
                conv.weight.copy_(torch.cat(blocks, dim=1).view(channels, n_tasks * channels, 1, 1))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        cat = torch.cat(feats, dim=1)
        return [torch.relu(bn(conv(cat))) for conv, bn in zip(self.convs, self.bns)]


class NDDRNet(nn.Module):
    """NDDR-CNN: one backbone per task, an NDDR layer after every backbone stage, one head per task."""

    def __init__(self, n_classes: dict[str, int], width: int = 32):
        super().__init__()
        if "principal" not in n_classes:
            raise ValueError("a 'principal' task is required")
        self.tasks = list(n_classes)
        self.backbones = nn.ModuleDict({t: ConvBackbone(width) for t in self.tasks})
        widths = self.backbones[self.tasks[0]].widths
        self.nddr = nn.ModuleList(NDDRLayer(len(self.tasks), c) for c in widths)
        self.heads = nn.ModuleDict({t: nn.Linear(widths[-1], c) for t, c in n_classes.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = [x] * len(self.tasks)
        for i, nddr in enumerate(self.nddr):
            feats = nddr([self.backbones[t].stages[i](f) for t, f in zip(self.tasks, feats)])
        return {t: self.heads[t](pool(f)) for t, f in zip(self.tasks, feats)}


MODELS = ("stl", "hps", "nddr")


def build_mtl_model(kind: str, n_classes: dict[str, int], width: int, weighting: str = "fixed") -> nn.Module:
    """'stl' keeps the principal head only; 'hps' and 'nddr' have a head for every task.

    weighting="uncertainty" attaches `loss_weights` (UncertaintyWeights) to a multi-task model, so that DDP and
    the checkpoints carry it with the weights; the STL baseline always trains on plain cross-entropy.
    """
    if kind == "stl":
        return HardSharingNet({"principal": n_classes["principal"]}, width)
    if kind == "hps":
        model = HardSharingNet(n_classes, width)
    elif kind == "nddr":
        model = NDDRNet(n_classes, width)
    else:
        raise ValueError(f"unknown MTL model '{kind}'; one of {', '.join(MODELS)}")
    if weighting == "uncertainty":
        model.loss_weights = UncertaintyWeights(list(n_classes))
    return model


class UncertaintyWeights(nn.Module):
    """Kendall et al. (2018): learnable s_t = log sigma_t^2 per task; L = sum_t exp(-s_t) CE_t + s_t."""

    def __init__(self, tasks: list[str]):
        super().__init__()
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in tasks})

    def forward(self, per_task: dict[str, Tensor]) -> Tensor:
        return sum(torch.exp(-self.log_vars[t]) * ce + self.log_vars[t] for t, ce in per_task.items())


def multitask_loss(logits: dict[str, Tensor], targets: dict[str, Tensor], weights: dict[str, float] | UncertaintyWeights
                   ) -> tuple[Tensor, dict[str, Tensor]]:
    """L = sum_t w_t CE(logits_t, y_t) with fixed w_t, or Kendall's uncertainty weighting; returns total and CEs."""
    per_task = {t: F.cross_entropy(out, targets[t]) for t, out in logits.items()}
    if isinstance(weights, UncertaintyWeights):
        total = weights(per_task)
    else:
        total = sum(weights[t] * ce for t, ce in per_task.items())
    return total, {t: ce.detach() for t, ce in per_task.items()}
