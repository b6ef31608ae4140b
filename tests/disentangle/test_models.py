import pytest
import torch

from detaux_ray.disentangle.models import DisentangleAE
from detaux_ray.tensors import to_float_images


@pytest.mark.parametrize("size", [16, 32, 64])
def test_autoencoder_shapes(size):
    model = DisentangleAE(size, k=4, latent_dim=10)
    x = to_float_images(torch.randint(0, 255, (3, size, size, 3), dtype=torch.uint8))
    s, rec = model(x)
    assert s.shape == (3, 4, 10) and rec.shape == x.shape and 0 <= rec.min() and rec.max() <= 1
    if size == 64:  # the paper's 4-layer encoder: 32, 32, 64, 64 channels
        convs = [m for m in model.encoder.conv if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == [32, 32, 64, 64]


def test_resnet18_feature_map_autoencoder_trains_on_the_flattened_map():
    from detaux_ray.config import load_config
    from detaux_ray.disentangle.objective import beta_schedule, detaux_loss
    from detaux_ray.disentangle.models import MapProjectors

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
    with pytest.raises(ValueError, match="a multiple of 32 and >= 64"):
        DisentangleAE(48, 3, 4, arch="resnet18")


def test_hidden_layer_adversary_reads_what_a_linear_one_cannot_and_survives_a_checkpoint():
    """A label coded by the radius (inside / outside a ring) is invisible to a linear classifier, not to an MLP:
    the adversary with adversary_hidden > 0 must see such a factor for the confusion loss to remove it."""
    from detaux_ray.disentangle.models import SubspaceClassifiers

    torch.manual_seed(0)
    s = torch.randn(512, 1, 2)
    y = (s.norm(dim=2).squeeze(1) > 1.18).long()  # ~half the points inside, half outside

    def train_accuracy(hidden: int) -> float:
        heads = SubspaceClassifiers(1, 2, 2, hidden)
        opt = torch.optim.Adam(heads.parameters(), lr=0.02)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(heads(s)[0], y).backward()
            opt.step()
        return (heads(s)[0].argmax(1) == y).float().mean().item()

    assert train_accuracy(0) < 0.7 and train_accuracy(32) > 0.9
    heads = SubspaceClassifiers(3, 4, 5, 8)
    s3 = torch.randn(6, 3, 4, requires_grad=True)
    out = heads(s3, frozen=True)
    assert out.shape == (3, 6, 5)
    out.sum().backward()
    assert s3.grad.abs().sum() > 0 and heads.w_hidden.grad is None and heads.w.grad is None
    model = DisentangleAE(16, 3, 4, n_principal=5, n_adversary=True, adversary_hidden=8)
    again = DisentangleAE.from_state(model.state_dict(), 16, 3, 4)
    assert again.adversary.hidden == 8


def test_private_alpha_encoder_routes_the_principal_terms_away_from_the_shared_encoder():
    torch.manual_seed(0)
    shared = DisentangleAE(16, 3, 4, n_principal=5)
    torch.manual_seed(0)
    private = DisentangleAE(16, 3, 4, n_principal=5, alpha_encoder="private", alpha=1)
    # f_alpha is drawn last: the other modules start from the same weights as without the option, and f is the
    # paired network's first half.
    assert torch.equal(shared.projectors.w1, private.projectors.w1)
    x = torch.rand(6, 3, 16, 16)
    z = private.encodings(x)
    assert torch.allclose(z[:, 0], shared.encoder(x), atol=1e-6)
    s = private.subspaces(x)
    assert torch.allclose(s[:, 1], private.projectors(z[:, 1])[:, 1])
    assert torch.allclose(s[:, 0], private.projectors(z[:, 0])[:, 0])
    idx = torch.tensor([0, 1, 2, 1, 0, 2])
    assert torch.allclose(private.subspace(x, idx), s[torch.arange(6), idx], atol=1e-6)
    # The head on s_alpha trains f_alpha (the paired weights' second half) and never f (the first half); s_0's loss
    # trains f and never f_alpha. The first conv holds both encoders' filters side by side.
    w_first, w_last = private.encoder.conv[0].weight, private.encoder.w2
    half = w_first.shape[0] // 2

    def moved(g):
        return bool(g.abs().sum() > 0)

    private.principal_head(s[:, 1]).logsumexp(1).sum().backward(retain_graph=True)
    assert not moved(w_last.grad[0]) and not moved(w_first.grad[:half]) and moved(w_last.grad[1]) and moved(w_first.grad[half:])
    private.zero_grad(set_to_none=True)
    s[:, 0].sum().backward()
    assert moved(w_last.grad[0]) and moved(w_first.grad[:half]) and not moved(w_last.grad[1]) and not moved(w_first.grad[half:])
    again = DisentangleAE.from_state(private.state_dict(), 16, 3, 4)
    assert again.private_alpha and again.alpha == 1 and torch.equal(again.subspaces(x), private.subspaces(x))


def test_a_state_saved_with_two_separate_conv_encoders_loads_into_the_paired_one():
    from detaux_ray.disentangle.models import ConvEncoder

    torch.manual_seed(1)
    model = DisentangleAE(16, 3, 4, alpha_encoder="private", alpha=2)
    f, f_alpha = ConvEncoder(16, 4), ConvEncoder(16, 4)
    old = {n: v for n, v in model.state_dict().items() if not n.startswith("encoder.")}
    old.update({"encoder." + n: v for n, v in f.state_dict().items()})
    old.update({"alpha_encoder." + n: v for n, v in f_alpha.state_dict().items()})
    old["alpha_width"] = torch.tensor(1.0, dtype=torch.float64)
    again = DisentangleAE.from_state(old, 16, 3, 4)
    x = torch.rand(5, 3, 16, 16)
    z = again.encodings(x)
    assert torch.allclose(z[:, 0], f(x), atol=1e-6) and torch.allclose(z[:, 1], f_alpha(x), atol=1e-6)


def test_a_resnet_private_alpha_encoder_gives_every_row_its_own_encoding():
    torch.manual_seed(0)
    model = DisentangleAE(64, 3, 4, arch="resnet18", alpha_encoder="private", alpha=1).eval()
    x = torch.rand(4, 3, 64, 64)
    s = model.subspaces(x)
    idx = torch.tensor([1, 0, 2, 1])
    assert torch.allclose(model.subspace(x, idx), s[torch.arange(4), idx], atol=1e-5)
    assert torch.allclose(s[:, 1], model.projectors(model.alpha_encoder(x))[:, 1], atol=1e-5)


def test_bad_subspace_settings_are_refused():
    with pytest.raises(ValueError, match="alpha=3"):
        DisentangleAE(16, 3, 4, alpha_encoder="private", alpha=3)
    with pytest.raises(ValueError, match="one of: shared, private"):
        DisentangleAE(16, 3, 4, alpha_encoder="own")
