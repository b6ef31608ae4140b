import numpy as np
import pytest
import torch

from detaux_ray.config import CONSTANT_LATENT_REMEDY, Config, apply_overrides
from detaux_ray.disentangle.objective import beta_schedule, build_model, detaux_loss, optimizer
from detaux_ray.tensors import to_float_images
from detaux_ray.disentangle.pairs import sample_pairs
from detaux_ray.disentangle.scorecard import factor_columns, heatmap, probe_scores, scorecard


def _embeddings(n=3000, seed=0):
    """k = 3 subspaces of d = 4: 0 holds factor a, 1 holds factor b, 2 is dead; plus an id column."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 5, n), rng.integers(0, 3, n)
    s = np.zeros((n, 3, 4), np.float32)
    s[:, 0, 0] = a + 0.05 * rng.normal(size=n)
    s[:, 1, 1] = 100.0 * (b + 0.05 * rng.normal(size=n))  # scale must not matter
    return s, a, b


def test_scorecard_is_one_where_a_factor_lives_and_zero_for_random_or_dead():
    s, a, b = _embeddings()
    noise = np.random.default_rng(1).integers(0, 4, len(a))  # a "factor" no subspace encodes
    card = scorecard(s, "a", a, {"b": b, "noise": noise, "file_id": np.arange(len(a))}, alpha=0, seed=0)
    assert card.factors == ["a", "b", "noise"] and "file_id" in card.skipped  # an id is not a factor
    assert card.score(0, "a") > 0.95 and card.score(1, "b") > 0.95
    assert abs(card.score(1, "a")) < 0.1 and abs(card.score(0, "b")) < 0.1
    assert all(card.score(2, f) == 0.0 for f in card.factors)  # dead subspace
    assert all(abs(card.score(i, "noise")) < 0.1 for i in range(3))
    assert card.score("all", "a") > 0.9
    sep = card.principal_separation()
    assert sep["in_alpha"] > 0.95 and sep["ratio"] > 3
    assert card.best_factor(1)[0] == "b"


def test_factor_columns_bin_continuous_and_codes_strings(tmp_path):
    n = 1000
    rng = np.random.default_rng(0)
    cols, skipped = factor_columns("label", rng.integers(0, 3, n), {
        "age": rng.uniform(18, 80, n), "gender": np.where(rng.random(n) < 0.5, "f", "m"), "one": np.zeros(n)})
    assert set(cols) == {"label", "age", "gender"} and "one" in skipped
    assert cols["age"].max() == 9 and len(np.unique(cols["gender"])) == 2
    s, a, b = _embeddings(600)
    heatmap(scorecard(s, "a", a, {"b": b}, 0, n_fit=300, n_eval=300), tmp_path / "card.png")
    assert (tmp_path / "card.png").stat().st_size > 1000


def _two_factor_images(n: int, seed: int = 0):
    """16 x 16 images with two independent factors: the principal is the size of a white square (4 values),
    the nuisance the background hue (4 values), each image with 5% salt-and-pepper noise."""
    rng = np.random.default_rng(seed)
    size, hue = rng.integers(0, 4, n), rng.integers(0, 4, n)
    palette = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], np.uint8)
    x = np.broadcast_to(palette[hue][:, None, None, :], (n, 16, 16, 3)).copy()
    for i in range(n):
        h = 2 + 2 * size[i]  # half-width 2..8 px: the square covers 4-64% of the image
        x[i, 8 - h // 2 - 1:8 + h // 2 + 1, 8 - h // 2 - 1:8 + h // 2 + 1] = 255
    flip = rng.random((n, 16, 16)) < 0.05
    x[flip] = rng.integers(0, 2, (int(flip.sum()), 1)) * 255
    return x, size, hue


@pytest.mark.parametrize("formulation", ["default", pytest.param("remedy", marks=pytest.mark.slow)])
def test_stage1_moves_the_principal_factor_into_alpha_and_only_there(formulation):
    """Learning test: 225 steps of the product's stage-1 objective (its model and optimizer: the private alpha
    encoder, the principal head, the adversary) on a two-factor toy, at three seeds; "remedy" adds L_dep as the
    constant-latent fallback does (config.CONSTANT_LATENT_REMEDY).

    Thresholds, on the median over the seeds (one fragile seed neither passes nor fails it): the principal probe in
    alpha >= 0.8 and at least 3x its score in the other subspace (issue 29's targets). The untrained model scores
    ~0.05 in alpha, so passing needs training to put the size into alpha, and only there. Measured 2026-12-06 (Intel
    Xeon, one thread, seeds 0-5; docs/studies/2026-12-06-label-dependence.md): alpha 1.00 at every seed either way;
    the other subspace 0.77 / 0.58 / 0.65 / 0.75 / 0.03 / 0.63 by default (the adversary confused, near log 4, while
    the probe reads the size), 0.08 / 0.26 / 0.14 / 0.13 / -0.02 / 0.05 with L_dep. The default's leak is issue 29's
    open problem: reported as an expected failure with its numbers, the remedy's asserted. One torch thread, set
    here: the float order of the reductions changes single runs."""
    sets = list(CONSTANT_LATENT_REMEDY) if formulation == "remedy" else []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cards = [_learn(seed, sets) for seed in (0, 1, 2)]
    finally:
        torch.set_num_threads(threads)
    in_alpha = float(np.median([c.score(0, "size") for c in cards]))
    elsewhere = float(np.median([c.score(1, "size") for c in cards]))
    assert in_alpha >= 0.8, [c.to_dict() for c in cards]
    if formulation == "default" and in_alpha < 3 * max(elsewhere, 0.05):
        pytest.xfail(f"the principal leaks into subspace 1 (issue 29): median {elsewhere:.2f} vs alpha {in_alpha:.2f}")
    assert in_alpha >= 3 * max(elsewhere, 0.05), [c.to_dict() for c in cards]


def _learn(seed: int, sets: list[str]):
    """The toy's scorecard after 6 epochs of 1,200 pairs, `sets` applied to its config; latent_dim 10 as the presets (at 6, all six units of a
    projector's hidden layer were off for every image at initialisation at seed 0: that subspace never trained)."""
    torch.manual_seed(seed)
    x, size, hue = _two_factor_images(1200, seed)
    cfg = apply_overrides(Config(), [f"disentangle.{k}" for k in ("k=2", "latent_dim=10", "epochs=6", "batch_size=32",
                                                                  "lr=2e-3")] + sets).disentangle
    model = build_model(cfg, 16, n_principal=4)
    opt = optimizer(model, cfg, fused=False)
    images, labels = torch.from_numpy(x), torch.from_numpy(size)
    for epoch in range(cfg.epochs):
        i1, i2, same = sample_pairs(size, 1200, cfg.oracle_prob, seed, epoch)
        for b in range(0, 1200, cfg.batch_size):
            sl = slice(b, b + cfg.batch_size)
            loss, _, _ = detaux_loss(model, to_float_images(images[i1[sl]]), to_float_images(images[i2[sl]]),
                                     torch.from_numpy(same[sl]), beta_schedule(epoch + b / 1200, cfg), cfg,
                                     y1=labels[i1[sl]], y2=labels[i2[sl]])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        s = model.subspaces(to_float_images(images)).numpy()
    return scorecard(s, "size", size, {"hue": hue}, alpha=0, n_fit=600, n_eval=600)


def test_probe_scores_vote_like_a_knn_classifier():
    """One neighbour search voting for several label columns scores exactly as a KNeighborsClassifier per column."""
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(3)
    x = rng.normal(size=(900, 4))
    ys = [rng.integers(0, 6, 900), (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0.5), np.zeros(900, int)]
    got = probe_scores(x[:500], x[500:], [y[:500] for y in ys], [y[500:] for y in ys], n_neighbors=15)
    spread = x[:500].std(0).max()
    for y, score in zip(ys[:2], got):
        values, counts = np.unique(y[:500], return_counts=True)
        majority = np.mean(y[500:] == values[np.argmax(counts)])
        acc = np.mean(KNeighborsClassifier(15).fit(x[:500] / spread, y[:500]).predict(x[500:] / spread) == y[500:])
        assert score == pytest.approx((acc - majority) / (1 - majority), abs=1e-12)
    assert got[1] > 0.5 and abs(got[0]) < 0.1 and got[2] == 0.0  # a held factor, noise, a constant column
