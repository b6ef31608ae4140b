"""Stage-3 core (no Ray): STL, MTL-HPS, NDDR-CNN and MTI-Net classifiers on a small conv net or ResNet-18, with
fixed or uncertainty loss weighting.

Tasks are named: "principal", and "auxiliary" (the discovered labels; "auxiliary_1", ... with several). A model's
forward returns {task: logits}; in training MTI-Net adds deep-supervision logits keyed "task@scale".
"""

from __future__ import annotations

import math

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

    def features(self, x: Tensor) -> list[Tensor]:
        """The output of every stage, fine to coarse."""
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return pool(self.features(x)[-1])


class ResNet18Backbone(ConvBackbone):
    """torchvision ResNet-18 (random init) as 4 stages: stem + layer1, layer2, layer3, layer4 (64..512 channels).

    For images of 64 px or less the stem is a 3x3 stride-1 conv without max-pool (the usual small-image variant),
    so a 32 px input still has 4x4 maps at layer4. `pretrained`: a local state_dict file (torchvision's
    resnet18 keys); tensors whose shape differs (the small stem's conv1) and the fc are skipped.
    """

    def __init__(self, image_size: int = 32, pretrained: str = ""):
        nn.Module.__init__(self)
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        net.fc = nn.Identity()  # the task heads replace ImageNet's classifier
        if image_size <= 64:
            net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        if pretrained:
            self.loaded, self.skipped = load_pretrained(net, pretrained)
        self.stages = nn.ModuleList([nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),
                                     net.layer2, net.layer3, net.layer4])
        self.widths = (64, 128, 256, 512)
        self.out_dim = 512


def load_pretrained(net: nn.Module, path: str) -> tuple[int, list[str]]:
    """Copy matching tensors from a local state_dict (never unpickles code); return (#loaded, skipped keys)."""
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path} holds no tensor matching a ResNet-18 (expected torchvision's resnet18 keys)")
    net.load_state_dict(usable, strict=False)
    return len(usable), sorted(set(own) - set(usable))


def make_backbone(kind: str, width: int, image_size: int = 32, pretrained: str = "") -> ConvBackbone:
    if kind == "conv":
        return ConvBackbone(width)
    if kind == "resnet18":
        return ResNet18Backbone(image_size, pretrained)
    raise ValueError(f"unknown backbone '{kind}'; one of: conv, resnet18")


def pool(x: Tensor) -> Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


AUX_GRADIENTS = ("sum", "reverse")


def combine_task_gradients(g_principal: Tensor, g_auxiliary: list[Tensor], mode: str) -> Tensor:
    """The gradient the shared representation h passes down, from the principal task's g_p = dL_p/dh and each
    auxiliary task's g_a = dL_a/dh (loss weights included):

    - sum:     g = g_p + sum_a g_a (plain multi-task learning, the paper);
    - reverse: g = g_p - sum_a g_a (a gradient-reversal layer, Ganin & Lempitsky 2015): the auxiliary head still
               learns to predict its labels, the shared features learn to hide them (invariance to the discovered
               factor instead of its prediction; ours, not the paper's).

    Two more rules were measured and left out: Du et al.'s cosine gate and PCGrad's projection stayed below
    `reverse` on the validation split at few labels (docs/studies/2026-12-06-few-labels-auxiliary-gradient.md).
    """
    if mode == "sum":
        return g_principal + sum(g_auxiliary)
    if mode == "reverse":
        return g_principal - sum(g_auxiliary)
    raise ValueError(f"mtl.aux_gradient must be one of {', '.join(AUX_GRADIENTS)}, got {mode!r}")


class _GradientFork(torch.autograd.Function):
    """Identity forward into one copy of h per task; backward hands the tasks' separate gradients (which autograd
    would otherwise sum at h) to `combine_task_gradients`. Inside the model's forward, so DDP and a single
    backward pass see nothing unusual."""

    @staticmethod
    def forward(ctx, h: Tensor, mode: str, n: int) -> tuple[Tensor, ...]:
        ctx.mode = mode
        return tuple(h.view_as(h) for _ in range(n))

    @staticmethod
    def backward(ctx, g_principal: Tensor, *g_auxiliary: Tensor):
        return combine_task_gradients(g_principal, list(g_auxiliary), ctx.mode), None, None


class HardSharingNet(nn.Module):
    """MTL-HPS: one shared backbone, one linear head per task. With only the principal task, it is the STL baseline.

    `aux_gradient` (sum | reverse) decides how the auxiliary tasks' gradients join the principal task's
    at the shared representation (`combine_task_gradients`)."""

    def __init__(self, n_classes: dict[str, int], width: int = 32, backbone=None, aux_gradient: str = "sum"):
        super().__init__()
        if "principal" not in n_classes:
            raise ValueError("a 'principal' task is required")
        if aux_gradient not in AUX_GRADIENTS:
            raise ValueError(f"mtl.aux_gradient must be one of {', '.join(AUX_GRADIENTS)}, got {aux_gradient!r}")
        self.backbone = backbone or ConvBackbone(width)
        self.heads = nn.ModuleDict({t: nn.Linear(self.backbone.out_dim, c) for t, c in n_classes.items()})
        self.aux_gradient = aux_gradient

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.backbone(x)
        if self.aux_gradient == "sum" or len(self.heads) == 1 or not torch.is_grad_enabled():
            return {t: head(h) for t, head in self.heads.items()}
        tasks = ["principal"] + [t for t in self.heads if t != "principal"]
        copies = _GradientFork.apply(h, self.aux_gradient, len(tasks))
        return {t: self.heads[t](c) for t, c in zip(tasks, copies)}


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

    def __init__(self, n_classes: dict[str, int], width: int = 32, backbone=None):
        super().__init__()
        if "principal" not in n_classes:
            raise ValueError("a 'principal' task is required")
        self.tasks = list(n_classes)
        self.backbones = nn.ModuleDict({t: backbone() if backbone else ConvBackbone(width) for t in self.tasks})
        widths = self.backbones[self.tasks[0]].widths
        self.nddr = nn.ModuleList(NDDRLayer(len(self.tasks), c) for c in widths)
        self.heads = nn.ModuleDict({t: nn.Linear(widths[-1], c) for t, c in n_classes.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = [x] * len(self.tasks)
        for i, nddr in enumerate(self.nddr):
            feats = nddr([self.backbones[t].stages[i](f) for t, f in zip(self.tasks, feats)])
        return {t: self.heads[t](pool(f)) for t, f in zip(self.tasks, feats)}


def _conv_bn(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MultiModalDistillation(nn.Module):
    """MTI-Net's distillation at one scale: every task receives the other tasks' features through a spatial gate,

        F_t^o = F_t + sum_{t' != t} sigmoid(G_{t,t'} F_t') * (W_{t,t'} F_t'),   G, W 3x3 convs.
    """

    def __init__(self, tasks: list[str], channels: int):
        super().__init__()
        self.tasks = tasks
        pairs = [f"{t}>{o}" for t in tasks for o in tasks if o != t]  # "source>target"
        self.gate = nn.ModuleDict({p: nn.Conv2d(channels, channels, 3, padding=1) for p in pairs})
        self.value = nn.ModuleDict({p: nn.Conv2d(channels, channels, 3, padding=1, bias=False) for p in pairs})

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for t in self.tasks:
            msg = [torch.sigmoid(self.gate[f"{o}>{t}"](feats[o])) * self.value[f"{o}>{t}"](feats[o])
                   for o in self.tasks if o != t]
            out[t] = feats[t] + sum(msg) if msg else feats[t]
        return out


class MTINet(nn.Module):
    """MTI-Net (Vandenhende et al., ECCV 2020) adapted to image classification.

    The shared backbone's S stage outputs are projected to `width` channels (keeps the model small). Coarse to
    fine, at every scale s: per-task features P_t^s = conv(proj_s(B_s) + up(D_t^{s+1})) (feature propagation from
    the coarser scale), a per-scale prediction head per task (deep supervision, "task@s" in training), and the
    multi-modal distillation D^s = MMD_s(P^s). Each task's final head classifies the concatenation of its pooled
    distilled features over all scales.
    """

    def __init__(self, n_classes: dict[str, int], width: int = 32, backbone: ConvBackbone | None = None):
        super().__init__()
        if "principal" not in n_classes:
            raise ValueError("a 'principal' task is required")
        self.tasks = list(n_classes)
        self.backbone = backbone or ConvBackbone(width)
        scales = range(len(self.backbone.widths))
        self.proj = nn.ModuleList(_conv_bn(c, width, 1) for c in self.backbone.widths)
        self.task_conv = nn.ModuleList(nn.ModuleDict({t: _conv_bn(width, width) for t in self.tasks}) for _ in scales)
        self.scale_heads = nn.ModuleList(nn.ModuleDict({t: nn.Linear(width, c) for t, c in n_classes.items()}) for _ in scales)
        self.distill = nn.ModuleList(MultiModalDistillation(self.tasks, width) for _ in scales)
        self.heads = nn.ModuleDict({t: nn.Linear(width * len(scales), c) for t, c in n_classes.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.backbone.features(x)
        out: dict[str, Tensor] = {}
        pooled: dict[str, list[Tensor]] = {t: [] for t in self.tasks}
        coarser: dict[str, Tensor] | None = None
        for s in reversed(range(len(feats))):  # coarse to fine
            base = self.proj[s](feats[s])
            per_task = {}
            for t in self.tasks:
                h = base if coarser is None else base + F.interpolate(coarser[t], size=base.shape[-2:], mode="bilinear",
                                                                      align_corners=False)
                per_task[t] = self.task_conv[s][t](h)
                if self.training:
                    out[f"{t}@{s}"] = self.scale_heads[s][t](pool(per_task[t]))
            coarser = self.distill[s](per_task)
            for t in self.tasks:
                pooled[t].append(pool(coarser[t]))
        for t in self.tasks:
            out[t] = self.heads[t](torch.cat(pooled[t], dim=1))
        return out


MODELS = ("stl", "hps", "nddr", "mti")


OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9
                   ) -> torch.optim.Optimizer:
    """Stage 3's optimiser over every parameter of `model`.

    adamw: theta <- theta (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)   (Loshchilov & Hutter 2019);
    sgd:   b <- mu b + g + wd theta,  theta <- theta - lr (g + wd theta + mu b)   (Nesterov momentum mu).
    SGD's step is proportional to the gradient where AdamW's is normalised per parameter, so its useful learning
    rates are an order of magnitude larger (the quick preset's best: AdamW 2e-3, SGD 3e-2; bench/README.md)."""
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
                               weight_decay=weight_decay)
    raise ValueError(f"mtl.optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def learning_rate(base: float, epoch: int, epochs: int, schedule: str) -> float:
    """Stage 3's learning rate in `epoch` (0-based): `base` (constant), or base * (1 + cos(pi * epoch / epochs)) / 2
    (cosine annealing without restarts, Loshchilov & Hutter 2017): a short budget ends on small steps instead of
    stopping wherever the last large step left the weights. A function of the epoch alone, so a resumed run goes on
    exactly where it stopped."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    raise ValueError(f"mtl.lr_schedule must be 'constant' or 'cosine', got {schedule!r}")


def build_mtl_model(kind: str, n_classes: dict[str, int], width: int, weighting: str = "fixed", backbone: str = "conv",
                    image_size: int = 32, pretrained: str = "", aux_gradient: str = "sum") -> nn.Module:
    """'stl' keeps the principal head only; 'hps', 'nddr' and 'mti' have a head for every task.

    weighting="uncertainty" attaches `loss_weights` (UncertaintyWeights) to a multi-task model, so that DDP and
    the checkpoints carry it with the weights; the STL baseline always trains on plain cross-entropy. `aux_gradient`
    (HardSharingNet) shapes 'hps' only; the other kinds ignore it (NDDR and MTI have no single shared representation,
    and STL no auxiliary task), so one config can compare HPS under a gradient rule with the others.
    """
    def make() -> ConvBackbone:
        return make_backbone(backbone, width, image_size, pretrained)

    if kind == "stl":
        return HardSharingNet({"principal": n_classes["principal"]}, width, make())
    if kind == "hps":
        model = HardSharingNet(n_classes, width, make(), aux_gradient)
    elif kind == "nddr":
        model = NDDRNet(n_classes, width, make)
    elif kind == "mti":
        model = MTINet(n_classes, width, make())
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
        """per_task may hold deep-supervision terms "task@s": they share task's exp(-s_t); s_t is added once."""
        total = sum(torch.exp(-self.log_vars[task_of(k)]) * ce for k, ce in per_task.items())
        return total + sum(self.log_vars[t] for t in {task_of(k) for k in per_task})


UNLABELLED = -1  # a training image without its principal label (data.labelled_frac): it trains the auxiliary heads


def masked_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """CE = sum_n m_n CE(logits_n, y_n) / max(1, sum_n m_n) with m_n = [y_n != UNLABELLED]: the mean over the
    labelled rows only. An unlabelled row adds nothing to the loss or its gradient; a batch without a label gives 0."""
    known = y != UNLABELLED
    ce = F.cross_entropy(logits, torch.where(known, y, torch.zeros_like(y)), reduction="none")
    return (ce * known).sum() / known.sum().clamp_min(1)


def task_of(key: str) -> str:
    """'principal@2' (a deep-supervision output at scale 2) -> 'principal'."""
    return key.split("@", 1)[0]


def multitask_loss(logits: dict[str, Tensor], targets: dict[str, Tensor], weights: dict[str, float] | UncertaintyWeights
                   ) -> tuple[Tensor, dict[str, Tensor]]:
    """L = sum_k w_task(k) CE(logits_k, y_task(k)) over every output k (final and deep-supervision ones), with fixed
    w_t or Kendall's uncertainty weighting; returns the total and the final outputs' CEs. The principal CE is over
    the labelled rows only (`masked_cross_entropy`); every row has its auxiliary labels."""
    per_key = {k: (masked_cross_entropy if task_of(k) == "principal" else F.cross_entropy)(out, targets[task_of(k)])
               for k, out in logits.items()}
    if isinstance(weights, UncertaintyWeights):
        total = weights(per_key)
    else:
        total = sum(weights[task_of(k)] * ce for k, ce in per_key.items())
    return total, {k: ce.detach() for k, ce in per_key.items() if "@" not in k}
