"""Every stage-1 loss term and the oracle (detaux_ray.disentangle.losses), on hand-computed cases."""

import itertools
import math

import pytest
import torch

from detaux_ray.disentangle import losses
from detaux_ray.disentangle.models import Projectors


def test_sparsity_zero_for_disjoint_supports_positive_otherwise():
    disjoint = torch.tensor([[[1.0, 0, 0], [0, 2.0, 0], [0, 0, -3.0]]])  # (B=1, k=3, d=3)
    assert losses.sparsity_loss(disjoint).item() == 0.0
    overlap = torch.tensor([[[1.0, 1.0, 0], [0, 2.0, 0], [0, 0, 3.0]]])
    # s_0 * (s_1 + s_2) = [0, 2, 0]; s_1 * (s_0 + s_2) = [0, 2, 0]; s_2 * (s_0 + s_1) = 0: summed over the
    # subspaces [0, 4, 0], then the mean over the image and its 3 coordinates (the authors' reduction) -> 4/3
    assert losses.sparsity_loss(overlap).item() == pytest.approx(4.0 / 3.0)


def test_oracle_principal_when_labels_differ_farthest_other_when_equal():
    k, d = 3, 2
    s1 = torch.zeros(4, k, d)
    s2 = torch.zeros(4, k, d)
    s2[:, 0, 0] = 5.0  # every pair is far apart in the principal subspace (alpha = 0)
    s1[:3, 1, 0] = torch.tensor([-3.0, 0.0, 3.0])  # subspace 1 varies a lot across the batch ...
    s2[3, 1, 1] = 1.0  # ... so the last pair's raw distance 1 there is small relative to its spread,
    s2[3, 2, 1] = 1.0  # while the same raw distance in quiet subspace 2 is the farthest (normalised)
    same = torch.tensor([False, False, False, True])
    lam = losses.oracle_weights(s1, s2, same=same, principal=0, temperature=0.01)
    assert lam[0].tolist() == [1.0, 0.0, 0.0]
    assert lam[3].argmax().item() == 2 and lam[3, 2].item() > 0.99 and lam[3, 0].item() == 0.0


def test_distance_loss_pulls_and_pushes():
    s1 = torch.zeros(1, 2, 1)
    s2 = torch.tensor([[[0.3], [2.0]]])
    lam = torch.tensor([[1.0, 0.0]])  # push subspace 0 (delta 0.3 < m = 1), pull subspace 1 (delta 2)
    value = losses.distance_loss(s1, s2, lam, margin=1.0)
    # mean over (pair, subspace): (push (1 - 0.3)^2 in subspace 0 + pull 2^2 in subspace 1) / 2
    assert value.item() == pytest.approx(((1 - 0.3) ** 2 + 2.0**2) / 2, rel=1e-5)
    s2 = s2.clone().requires_grad_(True)
    losses.distance_loss(s1, s2, lam, margin=1.0).backward()
    assert s2.grad[0, 0, 0] < 0  # descending the loss moves the pushed pair apart (0.3 grows)
    assert s2.grad[0, 1, 0] > 0  # and pulls the other pair together (2.0 shrinks)
    far = torch.tensor([[[1.5], [0.0]]])
    assert losses.distance_loss(s1, far, lam, margin=1.0).item() == 0.0  # beyond the margin and together: 0


def test_reg_carries_a_gradient_and_is_zero_when_balanced():
    k = 4
    assert losses.oracle_balance_loss(torch.full((8, k), 1 / k)).item() == pytest.approx(0.0)
    s1 = torch.randn(16, k, 3, requires_grad=True)
    s2 = torch.randn(16, k, 3)
    lam = losses.oracle_weights(s1, s2, torch.ones(16, dtype=torch.bool), principal=0, temperature=1.0)
    losses.oracle_balance_loss(lam).backward()
    assert s1.grad.abs().sum() > 0  # the authors' code detached lam here


def test_reconstruction_is_the_mean_squared_error():
    x = torch.zeros(2, 3, 4, 4)
    x_rec = x.clone()
    x_rec[0, 0, 0, 0] = 2.0  # one pixel value off by 2 among 96
    assert losses.reconstruction_loss(x, x_rec).item() == pytest.approx(4.0 / 96)


def test_distance_loss_differing_pairs_and_relative_distances():
    s1 = torch.zeros(2, 2, 1)
    s2 = torch.tensor([[[3.0], [2.0]], [[0.5], [1.0]]])
    lam = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    same = torch.tensor([False, True])
    # pair 0 differs: pushed in subspace 0 (3 > m = 1: 0); pair 1 is the same class: pushed in subspace 1
    # ((1 - 1)^2 = 0). Pulls: `all` (the paper) pulls pair 0 in subspace 1 (2^2) and pair 1 in subspace 0 (0.5^2);
    # `same` only pair 1 there; `principal` pulls same-label pairs in alpha = 0 only and differing pairs elsewhere.
    def value(pulls):
        return losses.distance_loss(s1, s2, lam, 1.0, losses.pull_weights(lam, same, 0, pulls)).item()

    assert value("all") == pytest.approx((0.25 + 4.0) / 4)
    assert value("same") == pytest.approx(0.25 / 4)
    assert value("principal") == pytest.approx((0.25 + 4.0) / 4)
    assert losses.pull_weights(lam, same, 0, "principal").tolist() == [[0.0, 1.0], [1.0, 0.0]]
    # `alpha`: pair 1 (same label) pulled in alpha = 0 (0.5^2); pair 0 (differing) pulled nowhere
    assert losses.pull_weights(lam, same, 0, "alpha").tolist() == [[0.0, 0.0], [1.0, 0.0]]
    assert value("alpha") == pytest.approx(0.25 / 4)
    assert losses.distance_loss(s1, s2, lam, 1.0).item() == pytest.approx(value("all"))  # the default is the paper's
    # relative: distances over each subspace's batch spread, so scaling the whole latent changes nothing
    a = losses.distance_loss(s1, s2, lam, 1.0, relative=True)
    b = losses.distance_loss(10 * s1, 10 * s2, lam, 1.0, relative=True)
    assert a.item() == pytest.approx(b.item(), rel=1e-5) and a.item() > 0
    spread = losses.mean_pairwise_sq_distance(torch.cat([s1, s2]))  # 4 points per subspace
    pts = torch.tensor([0.0, 0.0, 3.0, 0.5])
    assert spread[0].item() == pytest.approx(((pts[:, None] - pts[None]) ** 2).mean().item())


def test_consistency_and_balance_are_means():
    assert losses.consistency_loss(torch.zeros(2, 4), torch.ones(2, 4)).item() == pytest.approx(1.0)
    lam = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 4)  # every pick on subspace 0 of k = 4
    expected = ((1 - 0.25) ** 2 + 3 * 0.25**2) / 4
    assert losses.oracle_balance_loss(lam).item() == pytest.approx(expected)


def test_principal_loss_is_cross_entropy_over_both_images():
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0], [10.0, 0.0], [10.0, 0.0]])
    y1, y2 = torch.tensor([0, 1]), torch.tensor([0, 1])  # rows 0-1 are x1, rows 2-3 are x2: the last is wrong
    value = losses.principal_loss(logits, y1, y2).item()
    wrong = -torch.log_softmax(torch.tensor([10.0, 0.0]), 0)[1].item()
    right = -torch.log_softmax(torch.tensor([10.0, 0.0]), 0)[0].item()
    assert value == pytest.approx((3 * right + wrong) / 4, rel=1e-5)


def test_batched_projectors_match_a_loop_over_mlps():
    proj = Projectors(3, 5)
    z = torch.randn(7, 5)
    out = proj(z)
    for i in range(3):
        ref = torch.relu(z @ proj.w1[i] + proj.b1[i]) @ proj.w2[i] + proj.b2[i]
        assert torch.allclose(out[:, i], ref, atol=1e-6)
    idx = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    assert torch.allclose(proj.project_one(z, idx), out[torch.arange(7), idx], atol=1e-6)


def test_adversary_classifiers_learn_on_detached_subspaces_and_confusion_moves_only_the_subspaces():
    from detaux_ray.disentangle.models import SubspaceClassifiers

    torch.manual_seed(0)
    heads = SubspaceClassifiers(2, 3, 4)
    s = torch.randn(8, 2, 3, requires_grad=True)
    y1, y2 = torch.randint(0, 4, (4,)), torch.randint(0, 4, (4,))
    adv = losses.adversary_loss(heads(s.detach()), y1, y2)
    logits = heads(s.detach())  # mean cross-entropy over both subspaces and both images of every pair
    manual = torch.stack([torch.nn.functional.cross_entropy(logits[j], torch.cat([y1, y2])) for j in range(2)]).mean()
    assert adv.item() == pytest.approx(manual.item(), rel=1e-6)
    conf = losses.confusion_loss(heads(s, frozen=True))
    conf.backward()
    assert s.grad.abs().sum() > 0 and heads.w.grad is None  # the encoder side never trains the classifiers
    # the confusion loss is smallest, log C, when the prediction is uniform
    assert losses.confusion_loss(torch.zeros(2, 8, 4)).item() == pytest.approx(math.log(4))
    assert losses.confusion_loss(torch.tensor([[[5.0, 0, 0, 0]]])).item() > math.log(4)


def test_spread_floor_is_hand_computed_scale_free_and_leaves_alpha_alone():
    """L_floor = mean over i != alpha of relu(rho w_alpha - w_i)^2 / (rho w_alpha)^2 with w_i the subspace's width.

    Two images, alpha's width 2, the others 0.5, 1.5 and 0 (a constant subspace): with rho = 0.5 the target is 1,
    so the terms are 0.25, 0 and 1, mean 5/12; scaling the latent changes nothing; no gradient reaches alpha."""
    from detaux_ray.disentangle.losses import spread_floor_loss

    s = torch.zeros(2, 4, 3)
    s[:, 0, 0] = torch.tensor([2.0, -2.0])  # alpha: width 2
    s[:, 1, 1] = torch.tensor([0.5, -0.5])
    s[:, 2, 2] = torch.tensor([1.5, -1.5])
    s[:, 3] = 3.0  # constant: width 0
    assert spread_floor_loss(s, 0, 0.5).item() == pytest.approx(5 / 12, rel=1e-5)
    assert spread_floor_loss(100 * s, 0, 0.5).item() == pytest.approx(5 / 12, rel=1e-5)
    assert spread_floor_loss(s, 0, 0.2).item() == pytest.approx((0.4 - 0) ** 2 / 0.4 ** 2 / 3, rel=1e-5)  # only the constant one
    s.requires_grad_(True)
    spread_floor_loss(s, 0, 0.5).backward()
    assert s.grad[:, 0].abs().sum() == 0 and s.grad[:, 1].abs().sum() > 0 and s.grad[:, 2].abs().sum() == 0


def test_unbiased_hsic_is_the_u_statistic_over_distinct_quadruples():
    # Song et al. 2012: HSIC_u = mean over ordered distinct (i, j, q, r) of h, h = the mean over the 24 orderings
    # (t, u, v, w) of k_tu l_tu + k_tu l_vw - 2 k_tu l_tv; computed here by brute force on n = 6.
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(6, 6, generator=g, dtype=torch.float64), torch.rand(6, 6, generator=g, dtype=torch.float64)
    k, l = a + a.T, b + b.T
    total, count = 0.0, 0
    for quad in itertools.permutations(range(6), 4):
        h = sum(k[t, u] * l[t, u] + k[t, u] * l[v, w] - 2 * k[t, u] * l[t, v]
                for t, u, v, w in itertools.permutations(quad))
        total, count = total + float(h) / 24, count + 1
    assert losses.hsic_unbiased(k, l).item() == pytest.approx(total / count, rel=1e-9)


def test_label_dependence_is_scale_free_zero_for_a_constant_and_unbiased_without_a_label_signal():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (128,), generator=g)
    free = torch.randn(128, 3, 6, generator=g)
    tied = free.clone()
    tied[:, :, 0] += y[:, None]  # the label on one coordinate of six, within the spread of the others
    assert losses.label_dependence(tied, y, 4).item() == pytest.approx(losses.label_dependence(100 * tied, y, 4).item(), rel=1e-5)
    assert losses.label_dependence(torch.ones(128, 3, 6), y, 4).item() == 0.0
    # Independent draws: the estimate is 0 on average (relu keeps it >= 0), far below a label on one coordinate.
    draws = [losses.label_dependence(torch.randn(128, 3, 6, generator=g), y, 4).item() for _ in range(20)]
    assert sum(draws) / len(draws) < 0.1 * losses.label_dependence(tied, y, 4).item()
