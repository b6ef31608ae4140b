"""Stage-1 model: conv encoder f, k projectors p_i, conv decoder g (METHOD.md, "Stage 1").

    x --f--> z --{p_i}--> {s_i} --sum--> z~ --g--> x~

Every subspace s_i has the full ambient size d; L_spar makes their supports disjoint, so the sum is a direct sum.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _conv_channels(image_size: int) -> tuple[int, ...]:
    # The paper's 64x64 encoder: 4 convs (32, 32, 64, 64), 4x4 kernels, stride 2, down to 4x4.
    # Smaller inputs drop the leading layers so the last map is always 4x4.
    if image_size not in (16, 32, 64):
        raise ValueError(f"the conv autoencoder takes 16, 32 or 64 pixel images, got {image_size}")
    n_layers = int(math.log2(image_size // 4))
    return (32, 32, 64, 64)[-n_layers:]


class ConvEncoder(nn.Module):
    """x (B, 3, S, S) in [0, 1] -> z (B, d)."""

    def __init__(self, image_size: int, latent_dim: int, hidden: int = 256):
        super().__init__()
        chans = _conv_channels(image_size)
        layers: list[nn.Module] = []
        c_in = 3
        for c in chans:
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 16, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.conv(x))


class ConvDecoder(nn.Module):
    """z~ (B, d) -> x~ (B, 3, S, S) in [0, 1]; mirror of ConvEncoder."""

    def __init__(self, image_size: int, latent_dim: int, hidden: int = 256):
        super().__init__()
        chans = _conv_channels(image_size)[::-1]
        self.c0 = chans[0]
        self.mlp = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, self.c0 * 16), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        outs = list(chans[1:]) + [3]
        c_in = self.c0
        for i, c in enumerate(outs):
            layers.append(nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1))
            if i < len(outs) - 1:
                layers.append(nn.ReLU(inplace=True))
            c_in = c
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mlp(z).view(-1, self.c0, 4, 4)
        return torch.sigmoid(self.deconv(h))


class Projectors(nn.Module):
    """k two-layer MLPs p_i(z) = W2_i relu(W1_i z + b1_i) + b2_i, all k evaluated as one batched einsum.

    z (B, d) -> s (B, k, d).
    """

    def __init__(self, k: int, latent_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(latent_dim)
        self.w1 = nn.Parameter(torch.empty(k, latent_dim, latent_dim).uniform_(-bound, bound))
        self.b1 = nn.Parameter(torch.empty(k, latent_dim).uniform_(-bound, bound))
        self.w2 = nn.Parameter(torch.empty(k, latent_dim, latent_dim).uniform_(-bound, bound))
        self.b2 = nn.Parameter(torch.empty(k, latent_dim).uniform_(-bound, bound))

    def forward(self, z: Tensor) -> Tensor:
        h = torch.relu(torch.einsum("bd,kde->bke", z, self.w1) + self.b1)
        return torch.einsum("bkd,kde->bke", h, self.w2) + self.b2

    def project_one(self, z: Tensor, i: Tensor) -> Tensor:
        """s_{i_n}(z_n) for a per-row subspace index i (B,): (B, d)."""
        h = torch.relu(torch.einsum("bd,bde->be", z, self.w1[i]) + self.b1[i])
        return torch.einsum("bd,bde->be", h, self.w2[i]) + self.b2[i]


class DisentangleAE(nn.Module):
    """Product-manifold autoencoder with k subspaces."""

    def __init__(self, image_size: int, k: int, latent_dim: int):
        super().__init__()
        if k < 2:
            raise ValueError(f"k (number of subspaces) must be >= 2, got {k}")
        self.k, self.latent_dim, self.image_size = k, latent_dim, image_size
        self.encoder = ConvEncoder(image_size, latent_dim)
        self.projectors = Projectors(k, latent_dim)
        self.decoder = ConvDecoder(image_size, latent_dim)

    def subspaces(self, x: Tensor) -> Tensor:
        """s = {p_i(f(x))}: (B, k, d)."""
        return self.projectors(self.encoder(x))

    def decode(self, s: Tensor) -> Tensor:
        """g(sum_i s_i)."""
        return self.decoder(s.sum(dim=1))

    def forward(self, x: Tensor, decode: bool = True) -> tuple[Tensor, Tensor] | Tensor:
        """(s, x~), or s alone with decode=False (the training step decodes several latents in one call)."""
        s = self.subspaces(x)
        return (s, self.decode(s)) if decode else s


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
