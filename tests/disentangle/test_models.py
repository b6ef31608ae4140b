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
    # Created last: the shared modules draw the same initial weights as without the option.
    assert torch.equal(shared.encoder.mlp[1].weight, private.encoder.mlp[1].weight)
    x = torch.rand(6, 3, 16, 16)
    s = private.subspaces(x)
    assert torch.allclose(s[:, 1], private.projectors(private.alpha_encoder(x))[:, 1])
    assert torch.allclose(s[:, 0], private.projectors(private.encoder(x))[:, 0])
    idx = torch.tensor([0, 1, 2, 1, 0, 2])
    assert torch.allclose(private.subspace(x, idx), s[torch.arange(6), idx], atol=1e-6)
    # The head on s_alpha trains f_alpha; the shared encoder gets no gradient from it, and s_0's loss none to f_alpha.
    private.principal_head(s[:, 1]).logsumexp(1).sum().backward(retain_graph=True)
    def moved(p):
        return p.grad is not None and bool(p.grad.abs().sum() > 0)

    assert not moved(private.encoder.mlp[3].weight) and moved(private.alpha_encoder.mlp[3].weight)
    private.zero_grad(set_to_none=True)
    s[:, 0].sum().backward()
    assert not moved(private.alpha_encoder.mlp[3].weight) and moved(private.encoder.mlp[3].weight)
    again = DisentangleAE.from_state(private.state_dict(), 16, 3, 4)
    assert again.alpha_encoder is not None and again.alpha == 1 and torch.equal(again.subspaces(x), private.subspaces(x))
    narrow = DisentangleAE(16, 3, 4, alpha_encoder="private", alpha_width=0.3)  # 32 * 0.3 rounds: only the width rebuilds it
    assert DisentangleAE.from_state(narrow.state_dict(), 16, 3, 4).alpha_encoder.mlp[1].out_features == round(256 * 0.3)
    narrow = DisentangleAE(16, 3, 4, alpha_encoder="private", alpha_width=0.5)
    assert narrow.alpha_encoder.conv[0].out_channels * 2 == narrow.encoder.conv[0].out_channels
    assert narrow.alpha_encoder.mlp[1].out_features * 2 == narrow.encoder.mlp[1].out_features
    rebuilt = DisentangleAE.from_state(narrow.state_dict(), 16, 3, 4)
    assert torch.equal(rebuilt.subspaces(x), narrow.subspaces(x))
    with pytest.raises(ValueError, match="alpha=3"):
        DisentangleAE(16, 3, 4, alpha_encoder="private", alpha=3)
    with pytest.raises(ValueError, match="one of: shared, private"):
        DisentangleAE(16, 3, 4, alpha_encoder="own")
    with pytest.raises(ValueError, match="alpha_width must be 1 with arch=resnet18"):
        DisentangleAE(64, 3, 4, arch="resnet18", alpha_encoder="private", alpha_width=0.5)
