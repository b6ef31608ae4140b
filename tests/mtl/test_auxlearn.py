"""MAXL's meta-gradient and AuxiLearn's implicit hypergradient against finite differences, on problems small
enough to differentiate numerically in float64."""

import torch
from torch import nn

from detaux_ray.mtl.auxlearn import (build_learner, implicit_hypergradient, label_stats, mask_softmax, maxl_meta_loss,
                                     train_loss)


class ToyNet(nn.Module):
    def __init__(self, d, c, psi):
        super().__init__()
        self.body = nn.Linear(d, 6)
        self.heads = nn.ModuleDict({"principal": nn.Linear(6, c), "auxiliary": nn.Linear(6, c * psi)})

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return {t: head(h) for t, head in self.heads.items()}


class ToyGen(nn.Module):
    def __init__(self, d, c, psi):
        super().__init__()
        self.psi, self.lin = psi, nn.Linear(d, c * psi)

    def forward(self, x, y):
        return mask_softmax(self.lin(x), y, self.psi)


def test_mask_softmax_puts_all_mass_in_the_principal_class_block():
    logits = torch.randn(4, 6)
    y = torch.tensor([0, 1, 2, 1])
    p = mask_softmax(logits, y, psi=2)
    assert torch.allclose(p.sum(1), torch.ones(4))
    for b in range(4):
        outside = [c for c in range(6) if c // 2 != y[b]]
        assert float(p[b, outside].abs().sum()) == 0.0


def test_maxl_meta_gradient_reaches_the_generator_and_matches_finite_differences():
    torch.manual_seed(0)
    d, c, psi = 5, 3, 2
    net, gen = ToyNet(d, c, psi).double(), ToyGen(d, c, psi).double()
    x, y = torch.randn(12, d, dtype=torch.float64), torch.randint(0, c, (12,))
    loss, _ = maxl_meta_loss(net, gen, x, y, alpha=0.5, w_aux=1.0, entropy_weight=0.2)
    (grad,) = torch.autograd.grad(loss, [gen.lin.weight])
    assert float(grad.abs().max()) > 1e-4  # the principal loss after the virtual step depends on phi
    eps = 1e-6

    def at(idx, delta):  # the meta loss with one generator weight moved (it needs autograd inside: the virtual step)
        with torch.no_grad():
            gen.lin.weight[idx] += delta
        out = float(maxl_meta_loss(net, gen, x, y, 0.5, 1.0, 0.2)[0])
        with torch.no_grad():
            gen.lin.weight[idx] -= delta
        return out

    for idx in [(0, 0), (2, 3), (5, 1)]:
        numeric = (at(idx, eps) - at(idx, -eps)) / (2 * eps)
        assert abs(numeric - float(grad[idx])) < 1e-6, (idx, numeric, float(grad[idx]))


def test_implicit_hypergradient_matches_finite_differences_on_a_quadratic():
    """L_train = 1/2 t'At - t'B phi (theta* = A^-1 B phi), L_A = 1/2 |theta - c|^2; dL_A/dphi = B'A^-1(theta* - c)."""
    torch.manual_seed(0)
    n, m = 6, 3
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(0.5, 1.5, n, dtype=torch.float64)) @ q.T
    b, c = torch.randn(n, m, dtype=torch.float64), torch.randn(n, dtype=torch.float64)

    def theta_star(phi):
        return torch.linalg.solve(a, b @ phi)

    def loss_aux(theta):
        return 0.5 * ((theta - c) ** 2).sum()

    phi = torch.randn(m, dtype=torch.float64, requires_grad=True)
    theta = theta_star(phi).detach().requires_grad_(True)
    loss_train = 0.5 * theta @ a @ theta - theta @ (b @ phi)
    (hyper,) = implicit_hypergradient(loss_train, loss_aux(theta), [theta], [phi], alpha=0.6, steps=80)
    exact = b.T @ torch.linalg.solve(a, theta.detach() - c)
    eps = 1e-6
    numeric = torch.stack([(loss_aux(theta_star(phi.detach() + eps * e)) - loss_aux(theta_star(phi.detach() - eps * e))) / (2 * eps)
                           for e in torch.eye(m, dtype=torch.float64)])
    assert torch.allclose(numeric, exact, atol=1e-6)
    assert torch.allclose(hyper, exact, atol=1e-6)
    (short,) = implicit_hypergradient(0.5 * theta @ a @ theta - theta @ (b @ phi), loss_aux(theta), [theta], [phi], 0.6, 1)
    assert not torch.allclose(short, exact, atol=1e-3)  # two Neumann terms are not enough: the test can fail


def test_the_real_modules_pass_gradients_to_the_generator():
    torch.manual_seed(0)
    net, gen = build_learner(n_principal=3, psi=2, width=4, image_size=16)
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 3, (8,))
    loss, terms = maxl_meta_loss(net, gen, x, y, alpha=0.1, w_aux=1.0, entropy_weight=0.2)
    grads = torch.autograd.grad(loss, list(gen.parameters()), allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads) and set(terms) == {"meta_principal", "neg_entropy"}
    theta = list(net.parameters())
    lt = train_loss(net(x), y, gen(x, y), 1.0)
    la = torch.nn.functional.cross_entropy(net(x[:4])["principal"], y[:4])
    hyper = implicit_hypergradient(lt, la, theta, list(gen.parameters()), alpha=0.1, steps=2)
    assert len(hyper) == len(list(gen.parameters())) and any(float(h.abs().sum()) > 0 for h in hyper)
    stats = label_stats(gen(x, y))
    assert 0 < stats["label_entropy"] <= torch.log(torch.tensor(6.0)) + 1e-6 and 0 < stats["label_diversity"] <= 1


def test_a_meta_step_moves_only_the_generator():
    from detaux_ray.mtl.auxlearn import AuxLabelLearner

    for kind in ("maxl", "auxilearn"):
        torch.manual_seed(0)
        net, gen = build_learner(n_principal=3, psi=2, width=4, image_size=16)
        learner = AuxLabelLearner(kind, gen, lr=1e-2, alpha=0.1, w_aux=1.0, entropy_weight=0.2, neumann_steps=2)
        x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 3, (8,))
        theta = [p.detach().clone() for p in net.parameters()]
        phi = [p.detach().clone() for p in gen.parameters()]
        out = learner.meta_step(net, x, y, x[:4], y[:4])
        assert "meta_loss" in out and all(v == v for v in out.values())
        assert all(torch.equal(a, b) for a, b in zip(theta, net.parameters()))  # theta is the training loop's
        assert all(p.grad is None for p in net.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(phi, gen.parameters())), kind
        again = AuxLabelLearner(kind, build_learner(3, 2, 4, image_size=16)[1], 1e-2, 0.1, 1.0, 0.2, 2)
        again.load_state_dict(learner.state_dict())
        assert torch.equal(again.targets(x, y), learner.targets(x, y))
