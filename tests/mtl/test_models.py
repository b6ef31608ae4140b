"""detaux_ray/mtl.py: STL, MTL-HPS, NDDR-CNN, MTI-Net, loss weighting, backbones."""

import math

import pytest
import torch

from detaux_ray.tensors import count_parameters
from detaux_ray.mtl.models import build_mtl_model, multitask_loss


def test_stl_and_hps_forward_backward():
    n_classes = {"principal": 8, "auxiliary": 5}
    x = torch.rand(4, 3, 32, 32)
    y = {"principal": torch.randint(0, 8, (4,)), "auxiliary": torch.randint(0, 5, (4,))}
    stl, hps = build_mtl_model("stl", n_classes, 8), build_mtl_model("hps", n_classes, 8)
    assert set(stl(x)) == {"principal"} and {k: v.shape for k, v in hps(x).items()} == {"principal": (4, 8), "auxiliary": (4, 5)}
    loss, per_task = multitask_loss(hps(x), y, {"principal": 1.0, "auxiliary": 0.5})
    assert loss.item() == pytest.approx(per_task["principal"].item() + 0.5 * per_task["auxiliary"].item(), rel=1e-5)
    loss.backward()
    assert count_parameters(hps) - count_parameters(stl) == 5 * (32 + 1)


def test_nddr_forward_backward_and_near_identity_init():
    from detaux_ray.mtl.models import NDDRLayer

    n_classes = {"principal": 8, "auxiliary": 5}
    nddr, hps = build_mtl_model("nddr", n_classes, 8), build_mtl_model("hps", n_classes, 8)
    x = torch.rand(4, 3, 32, 32)
    out = nddr(x)
    assert {k: v.shape for k, v in out.items()} == {"principal": (4, 8), "auxiliary": (4, 5)}
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is not None for p in nddr.parameters())
    assert count_parameters(nddr) > 2 * count_parameters(hps) - count_parameters(hps.heads)  # a backbone per task
    layer = NDDRLayer(2, 3, own=0.9)
    w = layer.convs[1].weight.view(3, 6)
    assert torch.allclose(w[:, 3:], 0.9 * torch.eye(3)) and torch.allclose(w[:, :3], 0.1 * torch.eye(3))


def test_uncertainty_weights_are_learned():
    n_classes = {"principal": 4, "auxiliary": 3}
    model = build_mtl_model("hps", n_classes, 4, weighting="uncertainty")
    assert not hasattr(build_mtl_model("stl", n_classes, 4, weighting="uncertainty"), "loss_weights")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.rand(8, 3, 16, 16)
    y = {"principal": torch.randint(0, 4, (8,)), "auxiliary": torch.randint(0, 3, (8,))}
    before = {t: float(v) for t, v in model.loss_weights.log_vars.items()}
    for _ in range(3):
        loss, per_task = multitask_loss(model(x), y, model.loss_weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = {t: float(v) for t, v in model.loss_weights.log_vars.items()}
    assert all(after[t] != before[t] for t in before)


@pytest.mark.parametrize("kind", ["hps", "nddr", "mti"])
def test_every_model_takes_several_auxiliary_tasks(kind):
    n_classes = {"principal": 6, "auxiliary": 4, "auxiliary_1": 3}
    model = build_mtl_model(kind, n_classes, 4)
    x = torch.rand(2, 3, 16, 16)
    y = {t: torch.randint(0, c, (2,)) for t, c in n_classes.items()}
    out = model(x)
    assert {k: v.shape for k, v in out.items() if "@" not in k} == {t: (2, c) for t, c in n_classes.items()}
    loss, per_task = multitask_loss(out, y, {"principal": 1.0, "auxiliary": 0.5, "auxiliary_1": 0.5})
    assert set(per_task) == set(n_classes)
    loss.backward()


def test_mti_net_deep_supervision_distillation_and_size():
    from detaux_ray.mtl.models import MTINet

    n_classes = {"principal": 8, "auxiliary": 5}
    mti = build_mtl_model("mti", n_classes, 8)
    assert isinstance(mti, MTINet)
    x = torch.rand(4, 3, 32, 32)
    y = {"principal": torch.randint(0, 8, (4,)), "auxiliary": torch.randint(0, 5, (4,))}
    out = mti(x)  # training mode: a prediction per task at every scale (deep supervision) and the final ones
    n_scales = len(mti.backbone.widths)
    assert set(out) == set(n_classes) | {f"{t}@{s}" for t in n_classes for s in range(n_scales)}
    assert all(out[f"principal@{s}"].shape == (4, 8) for s in range(n_scales))
    loss, per_task = multitask_loss(out, y, {"principal": 1.0, "auxiliary": 0.5})
    deep = sum(torch.nn.functional.cross_entropy(v, y[k.split("@")[0]]) * (1.0 if k.startswith("p") else 0.5)
               for k, v in out.items() if "@" in k)
    assert loss.item() == pytest.approx((per_task["principal"] + 0.5 * per_task["auxiliary"] + deep).item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in mti.parameters())  # every scale, gate and head is trained
    mti.eval()
    assert set(mti(x)) == set(n_classes)  # evaluation: the final heads only
    # the auxiliary task's features reach the principal head through the distillation gates
    gate = mti.distill[0].gate["auxiliary>principal"]
    assert gate.weight.grad is not None and gate.weight.grad.abs().sum() > 0
    # projected to `width` channels: far smaller than a backbone per task
    assert count_parameters(mti) < count_parameters(build_mtl_model("nddr", n_classes, 8))


def test_resnet18_backbone_and_local_pretrained_weights(tmp_path):
    from torchvision.models import resnet18

    from detaux_ray.mtl.models import ResNet18Backbone

    n_classes = {"principal": 8, "auxiliary": 5}
    for kind in ("stl", "hps", "mti"):
        model = build_mtl_model(kind, n_classes, 8, backbone="resnet18", image_size=32)
        model.eval()
        assert model(torch.rand(2, 3, 32, 32))["principal"].shape == (2, 8)
    ref = resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(ref.state_dict(), path)  # a user's local weights file (nothing is downloaded)
    bb = ResNet18Backbone(image_size=224, pretrained=str(path))
    assert bb.loaded == len(ref.state_dict()) - 2 and bb.skipped == []  # all but fc.weight / fc.bias
    assert torch.equal(bb.stages[3][0].conv1.weight, ref.layer4[0].conv1.weight)
    small = ResNet18Backbone(image_size=32, pretrained=str(path))
    assert small.skipped == ["conv1.weight"]  # the small-image stem has its own shape
    bad = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="no tensor matching a ResNet-18"):
        ResNet18Backbone(32, str(bad))


def test_learning_rate_schedules():
    from detaux_ray.mtl.models import learning_rate

    assert [learning_rate(1e-3, e, 8, "constant") for e in (0, 7)] == [1e-3, 1e-3]
    cosine = [learning_rate(1.0, e, 4, "cosine") for e in range(4)]
    assert cosine == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2])
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(1.0, 0, 4, "step")


def test_make_optimizer_steps_hand_computed():
    from detaux_ray.mtl.models import make_optimizer

    lin = torch.nn.Linear(1, 1, bias=False)
    lr, wd, mu = 0.1, 0.01, 0.9
    lin.weight.data.fill_(1.0)
    opt = make_optimizer(lin, "sgd", lr, wd, mu)
    theta, b = 1.0, 0.0
    for x in (2.0, 3.0):  # loss = theta * x: gradient x
        opt.zero_grad()
        lin(torch.tensor([[x]])).sum().backward()
        opt.step()
        g = x + wd * theta  # Nesterov: b <- mu b + g; theta <- theta - lr (g + mu b)
        b = mu * b + g
        theta = theta - lr * (g + mu * b)
        assert lin.weight.item() == pytest.approx(theta, rel=1e-6)
    lin.weight.data.fill_(1.0)
    opt = make_optimizer(lin, "adamw", lr, wd)
    lin(torch.tensor([[2.0]])).sum().backward()
    opt.step()  # the first AdamW step: decay, then lr * sign(g) (m_hat / sqrt(v_hat) = g / |g|)
    assert lin.weight.item() == pytest.approx(1.0 * (1 - lr * wd) - lr, rel=1e-5)
    with pytest.raises(ValueError, match="mtl.optimizer"):
        make_optimizer(lin, "rmsprop", lr, wd)


def test_combine_task_gradients_hand_computed():
    from detaux_ray.mtl.models import combine_task_gradients

    gp = torch.tensor([[1.0, 0.0]])
    agree, oppose = torch.tensor([[1.0, 1.0]]), torch.tensor([[-1.0, 2.0]])
    assert torch.equal(combine_task_gradients(gp, [agree, oppose], "sum"), torch.tensor([[1.0, 3.0]]))
    # reverse: every auxiliary gradient with its sign flipped: (1, 0) - (1, 1) - (-1, 2) = (1, -3)
    assert torch.equal(combine_task_gradients(gp, [agree, oppose], "reverse"), torch.tensor([[1.0, -3.0]]))
    for gone in ("cosine", "project", "pcgrad"):  # measured below `reverse` and left out (the study log keeps them)
        with pytest.raises(ValueError, match="aux_gradient"):
            combine_task_gradients(gp, [agree], gone)


def test_hps_aux_gradient_reaches_the_backbone_as_combined():
    """One ordinary backward through HPS gives the backbone exactly the hand-combined gradient at its output."""
    mode = "reverse"  # the one rule other than the plain sum
    import torch.nn.functional as F

    from detaux_ray.mtl.models import combine_task_gradients

    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    y = {"principal": torch.randint(0, 4, (16,)), "auxiliary": torch.randint(0, 3, (16,))}
    model = build_mtl_model("hps", {"principal": 4, "auxiliary": 3}, 8, aux_gradient=mode)
    multitask_loss(model(x), y, {"principal": 1.0, "auxiliary": 0.5})[0].backward()
    got = [p.grad.clone() for p in model.backbone.parameters()]
    model.zero_grad()
    h = model.backbone(x)
    hd = h.detach().requires_grad_()
    gp, = torch.autograd.grad(F.cross_entropy(model.heads["principal"](hd), y["principal"]), hd)
    ga, = torch.autograd.grad(0.5 * F.cross_entropy(model.heads["auxiliary"](hd), y["auxiliary"]), hd)
    h.backward(combine_task_gradients(gp, [ga], mode))
    assert all(torch.allclose(a, b.grad, atol=1e-7) for a, b in zip(got, model.backbone.parameters()))
    # and the combination is not the plain sum here, or the test could not tell them apart
    assert not torch.allclose(combine_task_gradients(gp, [ga], mode), gp + ga)
    # the other kinds ignore the rule: NDDR trains exactly as under the plain sum
    torch.manual_seed(1)
    a = build_mtl_model("nddr", {"principal": 4, "auxiliary": 3}, 8, aux_gradient=mode)
    torch.manual_seed(1)
    b = build_mtl_model("nddr", {"principal": 4, "auxiliary": 3}, 8)
    for m in (a, b):
        multitask_loss(m(x), y, {"principal": 1.0, "auxiliary": 0.5})[0].backward()
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()))


def test_an_unlabelled_row_adds_nothing_to_the_principal_loss_or_its_gradient():
    from detaux_ray.mtl.models import UNLABELLED, masked_cross_entropy

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]], requires_grad=True)
    y = torch.tensor([0, 1, UNLABELLED])
    loss = masked_cross_entropy(logits, y)
    # hand-computed: the mean of the two labelled rows' CE, log(1 + e^-2) and log(1 + e^-1)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2, rel=1e-6)
    loss.backward()
    assert logits.grad[2].abs().max().item() == 0.0 and logits.grad[:2].abs().min().item() > 0
    # a batch with no label at all: zero, not NaN
    assert masked_cross_entropy(logits, torch.full((3,), UNLABELLED)).item() == 0.0
    # every row labelled: the plain mean CE
    full = torch.tensor([0, 1, 0])
    assert masked_cross_entropy(logits, full).item() == pytest.approx(torch.nn.functional.cross_entropy(logits, full).item())


def test_multitask_loss_masks_the_principal_and_keeps_every_auxiliary_label():
    from detaux_ray.mtl.models import UNLABELLED

    torch.manual_seed(0)
    logits = {"principal": torch.randn(4, 3), "auxiliary": torch.randn(4, 5)}
    targets = {"principal": torch.tensor([0, UNLABELLED, 2, UNLABELLED]), "auxiliary": torch.tensor([0, 1, 2, 3])}
    _, per = multitask_loss(logits, targets, {"principal": 1.0, "auxiliary": 1.0})
    F = torch.nn.functional
    assert per["principal"].item() == pytest.approx(F.cross_entropy(logits["principal"][[0, 2]], torch.tensor([0, 2])).item())
    assert per["auxiliary"].item() == pytest.approx(F.cross_entropy(logits["auxiliary"], targets["auxiliary"]).item())
