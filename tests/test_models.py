import pytest
import torch

from detaux_ray.models import DisentangleAE, count_parameters, to_float_images
from detaux_ray.mtl import build_mtl_model, multitask_loss


@pytest.mark.parametrize("size", [16, 32, 64])
def test_autoencoder_shapes(size):
    model = DisentangleAE(size, k=4, latent_dim=10)
    x = to_float_images(torch.randint(0, 255, (3, size, size, 3), dtype=torch.uint8))
    s, rec = model(x)
    assert s.shape == (3, 4, 10) and rec.shape == x.shape and 0 <= rec.min() and rec.max() <= 1
    if size == 64:  # the paper's 4-layer encoder: 32, 32, 64, 64 channels
        convs = [m for m in model.encoder.conv if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == [32, 32, 64, 64]


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


def test_core_imports_without_ray():
    import subprocess
    import sys

    code = ("import sys; sys.modules['ray'] = None\n"
            "import detaux_ray.config, detaux_ray.data, detaux_ray.models, detaux_ray.losses, detaux_ray.disentangle, "
            "detaux_ray.pairs, detaux_ray.clustering, detaux_ray.discovery, detaux_ray.mtl, detaux_ray.artifacts, "
            "detaux_ray.report, detaux_ray.search")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_nddr_forward_backward_and_near_identity_init():
    from detaux_ray.mtl import NDDRLayer

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
    from detaux_ray.mtl import MTINet

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

    from detaux_ray.mtl import ResNet18Backbone

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


def test_resnet18_feature_map_autoencoder_trains_on_the_flattened_map():
    from detaux_ray.config import load_config
    from detaux_ray.disentangle import beta_schedule, detaux_loss
    from detaux_ray.models import MapProjectors

    d = load_config("quick", ["disentangle.k=3", "disentangle.latent_dim=4"]).disentangle
    model = DisentangleAE(64, 3, 4, arch="resnet18", n_principal=2)
    assert model.latent_dim == 4 * 2 * 2 and isinstance(model.projectors, MapProjectors)
    x1, x2 = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
    s, rec = model(x1)
    assert s.shape == (4, 3, 16) and rec.shape == x1.shape
    # a projector is a 1x1 conv: the same channel map at every position of the feature map
    z = model.encoder(x1)
    p = model.projectors
    one = torch.relu(torch.einsum("c,ce->e", z.view(4, 4, 4)[0, :, 2], p.w1[1]) + p.b1[1]) @ p.w2[1] + p.b2[1]
    assert torch.allclose(s.view(4, 3, 4, 4)[0, 1, :, 2], one, atol=1e-5)
    assert torch.allclose(p.project_one(z, torch.tensor([1, 0, 2, 1])), s[torch.arange(4), torch.tensor([1, 0, 2, 1])], atol=1e-5)
    y1, y2 = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 0, 0])
    loss, terms, _ = detaux_loss(model, x1, x2, y1 == y2, beta_schedule(d.epochs - 1, d), d, y1=y1, y2=y2)
    loss.backward()
    assert torch.isfinite(loss) and set(terms) >= {"rec", "prin", "dist", "spar", "cons", "reg"}
    assert model.encoder.trunk[0].weight.grad is not None and model.projectors.w1.grad is not None
    with pytest.raises(ValueError, match="multiples of 32"):
        DisentangleAE(48, 3, 4, arch="resnet18")
