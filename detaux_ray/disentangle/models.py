"""Stage-1 model: conv encoder f, k projectors p_i, conv decoder g (METHOD.md, "Stage 1").

    x --f--> z --{p_i}--> {s_i} --sum--> z~ --g--> x~

Every subspace s_i has the full ambient size d; L_spar makes their supports disjoint, so the sum is a direct sum.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import arch_image_size_problem


def _conv_channels(image_size: int) -> tuple[int, ...]:
    # The paper's 64x64 encoder: 4 convs (32, 32, 64, 64), 4x4 kernels, stride 2, down to 4x4.
    # Smaller inputs drop the leading layers so the last map is always 4x4.
    problem = arch_image_size_problem("conv", image_size)
    if problem:
        raise ValueError(f"the conv autoencoder {problem}")
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


class PairedConvEncoder(nn.Module):
    """The shared encoder f and the private alpha encoder f_alpha (two ConvEncoders of one shape) run as one grouped
    network: x (B, 3, S, S) -> (B, 2, d) = (f(x), f_alpha(x)).

    The first conv reads x once for both (their filters side by side), the later convs have groups=2 and each MLP
    layer is one batched matrix product, so a step launches every layer once instead of twice (bench/step_profile.py).
    Built from the two encoders, it starts from their weights: the same function, fewer operator calls.
    """

    def __init__(self, f: ConvEncoder, f_alpha: ConvEncoder):
        super().__init__()
        pairs = [(a, b) for a, b in zip(f.conv, f_alpha.conv) if isinstance(a, nn.Conv2d)]
        layers: list[nn.Module] = []
        for j, (a, b) in enumerate(pairs):
            if (a.in_channels, a.out_channels) != (b.in_channels, b.out_channels):
                raise ValueError("the paired encoders must have the same shape")
            conv = nn.Conv2d(a.in_channels * (1 if j == 0 else 2), 2 * a.out_channels, 4, stride=2, padding=1, groups=1 if j == 0 else 2)
            with torch.no_grad():
                conv.weight.copy_(torch.cat([a.weight, b.weight]))
                conv.bias.copy_(torch.cat([a.bias, b.bias]))
            layers += [conv, nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)
        (l1, l2), (m1, m2) = (f.mlp[1], f.mlp[3]), (f_alpha.mlp[1], f_alpha.mlp[3])
        # (2, in, out) weights, (2, 1, out) biases: baddbmm over the pair dimension.
        self.w1 = nn.Parameter(torch.stack([l1.weight.T, m1.weight.T]).detach().clone())
        self.b1 = nn.Parameter(torch.stack([l1.bias, m1.bias])[:, None].detach().clone())
        self.w2 = nn.Parameter(torch.stack([l2.weight.T, m2.weight.T]).detach().clone())
        self.b2 = nn.Parameter(torch.stack([l2.bias, m2.bias])[:, None].detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        # Group g's channels are contiguous, so the flattened map splits into the two encoders' inputs.
        h = self.conv(x).reshape(x.shape[0], 2, -1).transpose(0, 1)
        h = torch.relu(torch.baddbmm(self.b1, h, self.w1))
        return torch.baddbmm(self.b2, h, self.w2).transpose(0, 1)


def paired_encoder_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state` with separate `encoder.*` and `alpha_encoder.*` conv encoders (the layout before PairedConvEncoder)
    in the paired layout; any dict of parameter-shaped tensors (weights, AdamW moments) converts the same way."""
    out = {n: v for n, v in state.items() if not n.startswith(("encoder.", "alpha_encoder."))}
    j = 0
    while f"encoder.conv.{j}.weight" in state:
        for kind in ("weight", "bias"):
            out[f"encoder.conv.{j}.{kind}"] = torch.cat([state[f"encoder.conv.{j}.{kind}"], state[f"alpha_encoder.conv.{j}.{kind}"]])
        j += 2
    for i, layer in ((1, 1), (2, 3)):
        out[f"encoder.w{i}"] = torch.stack([state[f"encoder.mlp.{layer}.weight"].T, state[f"alpha_encoder.mlp.{layer}.weight"].T]).contiguous()
        out[f"encoder.b{i}"] = torch.stack([state[f"encoder.mlp.{layer}.bias"], state[f"alpha_encoder.mlp.{layer}.bias"]])[:, None]
    return out


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
    """k two-layer MLPs p_i(z) = W2_i relu(W1_i z + b1_i) + b2_i, all k evaluated as one batched matrix product.

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
        """z (B, d), or (B, k, d) with its own input per projector (a private alpha encoder)."""
        # baddbmm over the k projectors (bias in the same call), in the (k, B, d) layout bmm wants: a view of z,
        # and the result is handed back as a (B, k, d) view; einsum here cost ~20 operator calls per product.
        zk = z.expand(self.w1.shape[0], *z.shape) if z.dim() == 2 else z.transpose(0, 1)
        h = torch.relu(torch.baddbmm(self.b1.unsqueeze(1), zk, self.w1))
        return torch.baddbmm(self.b2.unsqueeze(1), h, self.w2).transpose(0, 1)

    def project_one(self, z: Tensor, i: Tensor) -> Tensor:
        """s_{i_n}(z_n) for a per-row subspace index i (B,): (B, d)."""
        h = torch.relu(torch.baddbmm(self.b1[i].unsqueeze(1), z.unsqueeze(1), self.w1[i]))
        return torch.baddbmm(self.b2[i].unsqueeze(1), h, self.w2[i]).squeeze(1)


class ResNetMapEncoder(nn.Module):
    """ResNet-18 trunk (random init) keeping a compressed feature map: x (B, 3, S, S) -> z (B, c*h*w), the map of
    layer4 squeezed to c channels by a 1x1 conv and flattened (METHOD.md: fine-grained data such as Cars)."""

    def __init__(self, image_size: int, channels: int):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        self.trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        self.squeeze = nn.Conv2d(512, channels, 1)
        self.side = map_side(image_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.squeeze(self.trunk(x)), 1)


def map_side(image_size: int) -> int:
    problem = arch_image_size_problem("resnet18", image_size)
    if problem:
        raise ValueError(f"the ResNet-18 autoencoder {problem}")
    return image_size // 32


class _UpBlock(nn.Module):
    """x2 nearest upsampling, then a ResNet basic block (two 3x3 convs with BN and a projected shortcut)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                                  nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        return torch.relu(self.body(x) + self.skip(x))


class ResNetMapDecoder(nn.Module):
    """z~ (B, c*h*w) -> x~ (B, 3, S, S): the map through five x2 up-sampling residual stages (512..32 channels)."""

    def __init__(self, image_size: int, channels: int):
        super().__init__()
        self.channels, self.side = channels, map_side(image_size)
        widths = (512, 256, 128, 64, 32)
        self.expand = nn.Conv2d(channels, widths[0], 1)
        self.blocks = nn.Sequential(*[_UpBlock(a, b) for a, b in zip(widths, widths[1:] + (32,))])
        self.out = nn.Conv2d(32, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = z.view(-1, self.channels, self.side, self.side)
        return torch.sigmoid(self.out(self.blocks(torch.relu(self.expand(h)))))


class MapProjectors(Projectors):
    """k projectors as two 1x1 convs each (c -> c -> c, ReLU) on the feature map z (B, c*h*w) -> s (B, k, c*h*w).

    A 1x1 conv is the same linear map at every position, so all k run as one batched einsum over channels; the
    weights are Projectors' (k, c, c) ones.
    """

    def __init__(self, k: int, channels: int, positions: int):
        super().__init__(k, channels)
        self.c, self.p = channels, positions

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() == 3:  # (B, k, c*h*w): one input per projector
            zc = z.view(z.shape[0], z.shape[1], self.c, self.p)
            h = torch.relu(torch.einsum("bkcp,kce->bkep", zc, self.w1) + self.b1[None, :, :, None])
            return (torch.einsum("bkcp,kce->bkep", h, self.w2) + self.b2[None, :, :, None]).flatten(2)
        zc = z.view(-1, self.c, self.p)
        h = torch.relu(torch.einsum("bcp,kce->bkep", zc, self.w1) + self.b1[None, :, :, None])
        s = torch.einsum("bkcp,kce->bkep", h, self.w2) + self.b2[None, :, :, None]
        return s.flatten(2)

    def project_one(self, z: Tensor, i: Tensor) -> Tensor:
        zc = z.view(-1, self.c, self.p)
        h = torch.relu(torch.einsum("bcp,bce->bep", zc, self.w1[i]) + self.b1[i][:, :, None])
        return (torch.einsum("bcp,bce->bep", h, self.w2[i]) + self.b2[i][:, :, None]).flatten(1)


class SubspaceClassifiers(nn.Module):
    """m classifiers, one per subspace, on batch-standardised inputs: s (B, m, d) -> logits (m, B, C).

    hidden = 0: linear, logits = z W_i + b_i. hidden = h > 0: one hidden layer each,
    logits = relu(z V_i + c_i) W_i + b_i, so information a linear map cannot read (a factor encoded along a curve,
    which a kNN probe still finds) is visible to the adversary too. All m run as one batched matrix product.
    """

    def __init__(self, m: int, d: int, n_classes: int, hidden: int = 0):
        super().__init__()
        width = hidden or d
        if hidden:
            self.w_hidden = nn.Parameter(torch.randn(m, d, hidden) * math.sqrt(2.0 / d))
            self.b_hidden = nn.Parameter(torch.zeros(m, hidden))
        self.hidden = hidden
        self.w = nn.Parameter(torch.randn(m, width, n_classes) / math.sqrt(width))
        self.b = nn.Parameter(torch.zeros(m, n_classes))

    def forward(self, s: Tensor, frozen: bool = False) -> Tensor:
        """frozen: the weights are detached (the encoder's side of an adversarial loss moves s only)."""
        z = (s - s.mean(0, keepdim=True)) / (s.std(0, keepdim=True) + 1e-5)

        def weight(p: Tensor) -> Tensor:
            return p.detach() if frozen else p

        z = z.transpose(0, 1)  # (m, B, d): one batched product for all m classifiers
        if self.hidden:
            z = torch.relu(torch.baddbmm(weight(self.b_hidden).unsqueeze(1), z, weight(self.w_hidden)))
        return torch.baddbmm(weight(self.b).unsqueeze(1), z, weight(self.w))


class DisentangleAE(nn.Module):
    """Product-manifold autoencoder with k subspaces.

    arch="conv": the paper's small conv encoder / decoder with an MLP to a d-vector (16-64 px).
    arch="resnet18": ResNet-18 encoder keeping a latent_dim-channel feature map of side S/32, 1x1-conv projectors,
    a residual up-sampling decoder; every subspace is the flattened map (d = latent_dim * (S/32)^2), so the losses
    act on the flattened map unchanged.
    """

    def __init__(self, image_size: int, k: int, latent_dim: int, arch: str = "conv", n_principal: int = 0,
                 n_adversary: bool = False, adversary_hidden: int = 0, alpha_encoder: str = "shared", alpha: int = 0):
        super().__init__()
        if k < 2:
            raise ValueError(f"k (number of subspaces) must be >= 2, got {k}")
        if alpha_encoder not in ("shared", "private"):
            raise ValueError(f"unknown alpha_encoder '{alpha_encoder}'; one of: shared, private")
        if not 0 <= alpha < k:
            raise ValueError(f"the principal subspace alpha={alpha} is not one of the k={k} subspaces")
        self.k, self.image_size, self.arch, self.alpha = k, image_size, arch, alpha
        if arch == "conv":
            self.latent_dim = latent_dim
            make_encoder = lambda: ConvEncoder(image_size, latent_dim)  # noqa: E731
            self.encoder = make_encoder()
            self.projectors = Projectors(k, latent_dim)
            self.decoder = ConvDecoder(image_size, latent_dim)
        elif arch == "resnet18":
            side = map_side(image_size)
            self.latent_dim = latent_dim * side * side
            make_encoder = lambda: ResNetMapEncoder(image_size, latent_dim)  # noqa: E731
            self.encoder = make_encoder()
            self.projectors = MapProjectors(k, latent_dim, side * side)
            self.decoder = ResNetMapDecoder(image_size, latent_dim)
        else:
            raise ValueError(f"unknown autoencoder arch '{arch}'; one of: conv, resnet18")
        # Linear principal classifier on s_alpha (disentangle.w_principal > 0); stage 2 never uses it. Its input is
        # batch-standardised (no learned scale), so the cross-entropy cannot be lowered by inflating s_alpha:
        # measured, a plain linear head grew the latent ~4x during warm-up and the sparsity and consistency terms
        # then collapsed the reconstruction to the mean image.
        self.principal_head = (nn.Sequential(nn.BatchNorm1d(self.latent_dim, affine=False), nn.Linear(self.latent_dim, n_principal))
                               if n_principal > 0 else None)
        # Principal classifiers on the other subspaces, against which the encoder plays (w_adversary > 0).
        self.adversary = (SubspaceClassifiers(k - 1, self.latent_dim, n_principal, adversary_hidden)
                          if n_adversary and n_principal > 0 else None)
        # alpha_encoder="private": s_alpha = p_alpha(f_alpha(x)) with an encoder of its own, so the principal terms
        # (head, same-label pulls in alpha) train f_alpha and never the shared f that the nuisance subspaces read
        # (measured: the principal then separates completely, and with discover.space=ica the labels improve;
        # docs/studies/2026-11-28-stage1-study.md, 2026-11-30 at c33e7fc). f_alpha is drawn last, so the other
        # modules start from the same weights as a shared-encoder model's; with arch=conv, f and f_alpha then run as
        # one grouped network (self.encoder: x -> (B, 2, d)) and self.alpha_encoder stays None.
        self.private_alpha = alpha_encoder == "private"
        self.alpha_encoder: nn.Module | None = None
        if self.private_alpha:
            f_alpha = make_encoder()
            if arch == "conv":
                self.encoder = PairedConvEncoder(self.encoder, f_alpha)
            else:
                self.alpha_encoder = f_alpha
            self.register_buffer("alpha_index", torch.tensor(alpha))  # saved with the weights: from_state rebuilds it
            # Which of the two encodings each subspace reads: f_alpha's for alpha, f's for the others.
            self.register_buffer("_reads", (torch.arange(k) == alpha).long(), persistent=False)
        self._register_load_state_dict_pre_hook(self._from_older_layout)

    def _from_older_layout(self, state: dict, prefix: str, *args) -> None:
        """Loads a state saved before the conv encoders were paired (separate alpha_encoder.*; an alpha_width buffer)."""
        state.pop(prefix + "alpha_width", None)
        if isinstance(self.encoder, PairedConvEncoder) and prefix + "alpha_encoder.conv.0.weight" in state:
            mine = {n[len(prefix):]: state.pop(n) for n in list(state) if n.startswith((prefix + "encoder.", prefix + "alpha_encoder."))}
            state.update({prefix + n: v for n, v in paired_encoder_state(mine).items()})

    @classmethod
    def from_state(cls, state: dict, image_size: int, k: int, latent_dim: int, arch: str = "conv") -> "DisentangleAE":
        """A model shaped like `state` (with or without its principal head), weights loaded."""
        head, hidden = state.get("principal_head.1.weight"), state.get("adversary.w_hidden")
        model = cls(image_size, k, latent_dim, arch, n_principal=0 if head is None else int(head.shape[0]),
                    n_adversary="adversary.w" in state, adversary_hidden=0 if hidden is None else int(hidden.shape[2]),
                    alpha_encoder="private" if "alpha_index" in state else "shared",
                    alpha=int(state["alpha_index"]) if "alpha_index" in state else 0)
        model.load_state_dict(dict(state))
        return model

    def encodings(self, x: Tensor) -> Tensor:
        """(B, 2, d) = (f(x), f_alpha(x)) of a model with a private alpha encoder."""
        if self.alpha_encoder is None:
            return self.encoder(x)
        return torch.stack([self.encoder(x), self.alpha_encoder(x)], 1)

    def subspaces(self, x: Tensor) -> Tensor:
        """s = {p_i(f(x))}: (B, k, d); s_alpha = p_alpha(f_alpha(x)) with a private alpha encoder."""
        if not self.private_alpha:
            return self.projectors(self.encoder(x))
        return self.projectors(self.encodings(x).index_select(1, self._reads))

    def subspace(self, x: Tensor, i: Tensor) -> Tensor:
        """s_{i_n}(x_n) for a per-row subspace index i (B,): (B, d) (L_cons re-encodes only the swapped subspace)."""
        if not self.private_alpha:
            return self.projectors.project_one(self.encoder(x), i)
        mine = i == self.alpha
        if self.alpha_encoder is not None and not torch.compiler.is_compiling():
            # Two separate encoders (arch=resnet18): f_alpha on the swapped alpha rows only. (Compiled, every row goes
            # through both and the select below keeps the right one: static shapes, no host sync.)
            z = self.encoder(x)
            if bool(mine.any()):
                z = z.clone()
                z[mine] = self.alpha_encoder(x[mine])
            return self.projectors.project_one(z, i)
        zz = self.encodings(x)
        return self.projectors.project_one(torch.where(mine[:, None], zz[:, 1], zz[:, 0]), i)

    def decode(self, s: Tensor) -> Tensor:
        """g(sum_i s_i)."""
        return self.decoder(s.sum(dim=1))

    def forward(self, x: Tensor, decode: bool = True) -> tuple[Tensor, Tensor] | Tensor:
        """(s, x~), or s alone with decode=False (the training step decodes several latents in one call)."""
        s = self.subspaces(x)
        return (s, self.decode(s)) if decode else s
