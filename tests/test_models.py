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
            "detaux_ray.report")
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
