"""Peers of Detaux that *learn* auxiliary labels (no Ray): MAXL and AuxiLearn, the paper's Table 1 baselines.

Both train a multi-task net f(x; theta) (our HPS: a shared backbone, a principal head over C classes and an
auxiliary head over C * psi classes) on the principal labels and on soft auxiliary labels made by a label
generator g(x, y; phi), and differ in how phi learns:

* **MAXL** (Liu, Davison, Johns, NeurIPS 2019): through one virtual SGD step of theta. With
  L_train(theta, phi) = CE(f_pri(x; theta), y) + w_aux * CE_soft(f_aux(x; theta), g(x, y; phi)) and
  theta' = theta - alpha * grad_theta L_train(theta, phi) (kept in the graph: second order),
      L_meta(phi) = CE(f_pri(x; theta'(phi)), y) + lambda_H * sum_c gbar_c log gbar_c,
  gbar the batch mean of g (the regulariser against all samples collapsing onto one auxiliary class).
* **AuxiLearn** (Navon et al., ICLR 2021), "learning auxiliary labels": by implicit differentiation on a held-out
  auxiliary split. At an (approximate) optimum theta*(phi) of L_train, the hypergradient of the auxiliary-split
  principal loss L_A(theta) = CE(f_pri(x_A; theta), y_A) is
      dL_A/dphi = - (d^2 L_train / dphi dtheta) H^-1 grad_theta L_A,   H = d^2 L_train / dtheta^2,
  with H^-1 v approximated by the truncated Neumann series alpha * sum_{j=0..J} (I - alpha H)^j v
  (Hessian-vector products only).

MAXL's generator is a copy of the multi-task net's architecture; ours is the same backbone with one linear head.
MAXL and AuxiLearn use a focal variant of cross-entropy; we use plain cross-entropy, as every other model here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .models import HardSharingNet, make_backbone

LEARNERS = ("maxl", "auxilearn")


class LabelGenerator(nn.Module):
    """g(x, y; phi): a distribution over the psi auxiliary sub-classes of x's principal class y (MAXL's mask
    softmax: the logits of the other classes' blocks are excluded), as a (B, C * psi) soft label."""

    def __init__(self, n_principal: int, psi: int, width: int = 32, backbone: str = "conv", image_size: int = 32):
        super().__init__()
        self.n_principal, self.psi = n_principal, psi
        self.backbone = make_backbone(backbone, width, image_size)
        self.head = nn.Linear(self.backbone.out_dim, n_principal * psi)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return mask_softmax(self.head(self.backbone(x)), y, self.psi)


def mask_softmax(logits: Tensor, y: Tensor, psi: int) -> Tensor:
    """softmax over the psi logits of block y (columns y*psi .. y*psi+psi-1) of each row; 0 elsewhere."""
    block = torch.arange(logits.shape[1], device=logits.device) // psi
    return logits.masked_fill(block[None, :] != y[:, None], float("-inf")).softmax(1)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """CE_soft(z, t) = mean_b ( - sum_c t_bc log softmax(z_b)_c ); t rows sum to 1."""
    return -(target * F.log_softmax(logits, 1)).sum(1).mean()


def negative_entropy_of_mean(probs: Tensor) -> Tensor:
    """sum_c gbar_c log gbar_c with gbar = mean_b probs_b: minimised when the batch uses every class alike."""
    mean = probs.mean(0)
    return (mean * torch.log(mean + 1e-12)).sum()


def build_learner(n_principal: int, psi: int, width: int, backbone: str = "conv", image_size: int = 32
                  ) -> tuple[HardSharingNet, LabelGenerator]:
    """The multi-task net (principal + C * psi auxiliary outputs) and its label generator."""
    net = HardSharingNet({"principal": n_principal, "auxiliary": n_principal * psi}, width,
                         make_backbone(backbone, width, image_size))
    return net, LabelGenerator(n_principal, psi, width, backbone, image_size)


def train_loss(outputs: dict[str, Tensor], y: Tensor, soft: Tensor, w_aux: float) -> Tensor:
    """L_train = CE(principal) + w_aux * CE_soft(auxiliary, soft labels)."""
    return F.cross_entropy(outputs["principal"], y) + w_aux * soft_cross_entropy(outputs["auxiliary"], soft)


def _params(net: nn.Module) -> dict[str, Tensor]:
    return dict(net.named_parameters())


def _call(net: nn.Module, params: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    # Buffers are cloned so that a virtual forward does not move the BatchNorm running statistics.
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    return functional_call(net, {**params, **buffers}, (x,))


def maxl_meta_loss(net: nn.Module, gen: LabelGenerator, x: Tensor, y: Tensor, alpha: float, w_aux: float,
                   entropy_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """MAXL's L_meta(phi) (module docstring): principal loss after one virtual SGD step of theta whose auxiliary
    targets come from g; differentiable in phi to second order. Returns the loss and its terms (detached)."""
    params = _params(net)
    soft = gen(x, y)
    inner = train_loss(_call(net, params, x), y, soft, w_aux)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True, allow_unused=True)
    fast = {k: p - alpha * g if g is not None else p for (k, p), g in zip(params.items(), grads)}
    principal_after = F.cross_entropy(_call(net, fast, x)["principal"], y)
    neg_entropy = negative_entropy_of_mean(soft)
    total = principal_after + entropy_weight * neg_entropy
    return total, {"meta_principal": principal_after.detach(), "neg_entropy": neg_entropy.detach()}


def neumann_inverse_hvp(grad_train: list[Tensor], params: list[Tensor], v: list[Tensor], alpha: float, steps: int
                        ) -> list[Tensor]:
    """p ~= H^-1 v as alpha * sum_{j=0..steps} (I - alpha H)^j v, H the Hessian of the loss whose gradient
    `grad_train` (taken with create_graph=True) is; converges when 0 < alpha * eig(H) < 2."""
    term = [t.detach() for t in v]
    total = [t.clone() for t in term]
    for _ in range(steps):
        hv = torch.autograd.grad(grad_train, params, grad_outputs=term, retain_graph=True, allow_unused=True)
        term = [t - alpha * (h if h is not None else torch.zeros_like(t)) for t, h in zip(term, hv)]
        total = [s + t for s, t in zip(total, term)]
    return [alpha * s for s in total]


def implicit_hypergradient(loss_train: Tensor, loss_aux: Tensor, params: list[Tensor], aux_params: list[Tensor],
                           alpha: float, steps: int) -> list[Tensor]:
    """dL_A/dphi = - (d^2 L_train / dphi dtheta) H^-1 grad_theta L_A (the implicit function theorem at theta*),
    H^-1 by the Neumann series; L_A has no direct dependence on phi."""
    v = torch.autograd.grad(loss_aux, params, retain_graph=True, allow_unused=True)
    v = [g if g is not None else torch.zeros_like(p) for g, p in zip(v, params)]
    grad_train = torch.autograd.grad(loss_train, params, create_graph=True, allow_unused=True)
    keep = [i for i, g in enumerate(grad_train) if g is not None]
    grad_train = [grad_train[i] for i in keep]
    used = [params[i] for i in keep]
    p = neumann_inverse_hvp(grad_train, used, [v[i] for i in keep], alpha, steps)
    mixed = torch.autograd.grad(grad_train, aux_params, grad_outputs=p, allow_unused=True)
    return [-g if g is not None else torch.zeros_like(a) for g, a in zip(mixed, aux_params)]


def label_stats(soft: Tensor) -> dict[str, float]:
    """How the generator uses its C * psi classes: the entropy of the batch-mean label distribution (nats) and the
    share of classes that are some sample's most likely label."""
    soft = soft.detach()
    mean = soft.mean(0)
    used = torch.unique(soft.argmax(1)).numel()
    return {"label_entropy": float(-(mean * torch.log(mean + 1e-12)).sum()), "label_diversity": used / soft.shape[1]}


class AuxLabelLearner:
    """The label-generator side of a MAXL / AuxiLearn run: the generator, its optimiser, and the meta step that the
    training loop calls every `meta_every` steps (after theta's own step). Under DDP the generator's gradients
    are averaged over the workers by hand (it is not wrapped: its loss needs the unwrapped net's parameters)."""

    def __init__(self, kind: str, gen: LabelGenerator, lr: float, alpha: float, w_aux: float, entropy_weight: float,
                 neumann_steps: int):
        if kind not in LEARNERS:
            raise ValueError(f"unknown auxiliary-label learner '{kind}'; one of {', '.join(LEARNERS)}")
        self.kind, self.gen = kind, gen
        self.opt = torch.optim.Adam(gen.parameters(), lr=lr)
        self.alpha, self.w_aux, self.entropy_weight, self.neumann_steps = alpha, w_aux, entropy_weight, neumann_steps

    @torch.no_grad()
    def targets(self, x: Tensor, y: Tensor) -> Tensor:
        """Soft auxiliary labels for theta's step (phi is not trained by it)."""
        return self.gen(x, y)

    def meta_step(self, net: nn.Module, x: Tensor, y: Tensor, x_aux: Tensor | None = None, y_aux: Tensor | None = None
                  ) -> dict[str, float]:
        """One update of phi: MAXL's second-order meta-gradient on (x, y), or AuxiLearn's implicit hypergradient of
        the principal loss on the auxiliary split (x_aux, y_aux)."""
        phi = list(self.gen.parameters())
        if self.kind == "maxl":
            loss, terms = maxl_meta_loss(net, self.gen, x, y, self.alpha, self.w_aux, self.entropy_weight)
            grads = torch.autograd.grad(loss, phi, allow_unused=True)
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, phi)]
            out = {"meta_loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
        else:
            theta = [p for p in net.parameters() if p.requires_grad]
            soft = self.gen(x, y)
            loss_train = train_loss(net(x), y, soft, self.w_aux)
            loss_aux = F.cross_entropy(net(x_aux)["principal"], y_aux)
            neg_entropy = negative_entropy_of_mean(soft)  # the same regulariser as MAXL's, added to the hypergradient
            reg = torch.autograd.grad(self.entropy_weight * neg_entropy, phi, retain_graph=True, allow_unused=True)
            grads = implicit_hypergradient(loss_train, loss_aux, theta, phi, self.alpha, self.neumann_steps)
            grads = [g + (r if r is not None else 0) for g, r in zip(grads, reg)]
            out = {"meta_loss": float(loss_aux.detach()), "neg_entropy": float(neg_entropy.detach())}
        for p in net.parameters():  # the meta step's graph must leave no gradient on theta
            p.grad = None
        _average_across_workers(grads)
        for p, g in zip(phi, grads):
            p.grad = g.detach()
        self.opt.step()
        return out

    @torch.no_grad()
    def label_stats(self, x: Tensor, y: Tensor) -> dict[str, float]:
        return label_stats(self.gen(x, y))

    def state_dict(self) -> dict:
        return {"gen": self.gen.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.load_state_dict(state["gen"])
        self.opt.load_state_dict(state["opt"])


def _average_across_workers(grads: list[Tensor]) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for g in grads:
            dist.all_reduce(g)
            g /= dist.get_world_size()
