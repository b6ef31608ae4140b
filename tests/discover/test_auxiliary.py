"""Stage 2's choices and labels (detaux_ray.discover.auxiliary): which subspace or component, the dead cut and its
fallback, diagnostics against known factors, the labels every image gets."""

import numpy as np
import pytest

from detaux_ray.config import DiscoverConfig
from detaux_ray.discover.auxiliary import (choose_starts, choose_subspace, component_starts, criterion_margin, dead_subspaces,
                                           diagnostics, independent_components, level_separation, rank_subspaces,
                                           start_score, subspace_scores)
from detaux_ray.discover.clustering import cluster
from detaux_ray.errors import SingleClusterError
from latents import as_subspaces, oblique_factor, ring_factor


def test_diagnostics_on_known_labels():
    rng = np.random.default_rng(0)
    hue = rng.integers(0, 5, 2000)
    principal = rng.integers(0, 4, 2000)
    d = diagnostics(hue.copy(), principal, {"hue": hue, "principal": principal})
    assert d.n_aux_classes == 5 and d.best_factor == "hue"
    assert d.factor_scores["hue"]["homogeneity"] == pytest.approx(1.0)
    assert d.nmi_principal_aux < 0.01 and d.chi2_p_value > 0.001
    dep = diagnostics(principal.copy(), principal)
    assert dep.nmi_principal_aux == pytest.approx(1.0) and dep.chi2_p_value < 1e-10 and dep.best_factor is None


def test_with_few_labels_the_principal_diagnostics_read_the_labelled_rows_and_the_factor_match_every_row():
    rng = np.random.default_rng(0)
    hue = rng.integers(0, 5, 2000)
    principal = np.where(np.arange(2000) < 100, hue % 2, -1)  # 100 labelled rows, their principal read off the hue
    aux = np.where(np.arange(2000) < 100, hue, 0)  # labels that match the hue on the labelled rows only
    d = diagnostics(aux, principal, {"hue": hue}, labelled=principal >= 0)
    assert d.nmi_principal_aux > 0.3  # computed on the 100 labelled rows (with -1 rows it would be diluted)
    assert d.factor_scores["hue"]["homogeneity"] < 0.2  # every row: 1,900 of them, every hue, in one class
    assert sum(d.cluster_sizes.values()) == 2000
    labelled_only = diagnostics(aux[:100], principal[:100], {"hue": hue[:100]})
    assert labelled_only.factor_scores["hue"]["homogeneity"] == pytest.approx(1.0)  # what 100 rows alone would claim


def test_subspace_choice_skips_principal_and_dead_subspaces():
    rng = np.random.default_rng(0)
    n = 1000
    y = rng.integers(0, 3, n)
    s = np.zeros((n, 4, 2))
    s[:, 0, 0] = y  # principal subspace
    s[:, 1, 1] = rng.normal(size=n)  # independent factor
    s[:, 2, 0] = y + 0.1 * rng.normal(size=n)  # a copy of the principal factor
    # subspace 3 is dead (all zeros): it would win both criteria trivially
    sc = subspace_scores(s, y, alpha=0, margin=1.0, oracle_prob=0.5, seed=0)
    assert choose_subspace(sc, "dot", alpha=0, dead_frac=0.01) == 1
    assert choose_subspace(sc, "l_dist", alpha=0, dead_frac=0.01) in (1, 2)
    s[:, 1:] = 0
    with pytest.raises(SingleClusterError, match="constant"):
        choose_subspace(subspace_scores(s, y, 0, 1.0, 0.5, 0), "dot", 0, 0.01)


def _toy_latent(k: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """Subspaces: 0 the principal (4 classes), 1 a tiny copy of it, 2 a continuum, 3 a discrete nuisance factor;
    any further ones zero. Returns (s, y, rng)."""
    rng = np.random.default_rng(0)
    y, hue = rng.integers(0, 4, n), rng.integers(0, 4, n)
    s = np.zeros((n, k, 2))
    s[:, 0, 0] = y
    s[:, 1, 0] = 0.001 * (y + 0.05 * rng.normal(size=n))  # the principal again, tiny: scale must not help it
    s[:, 2] = rng.uniform(size=(n, 2))  # no cluster structure: any KMeans partition of it has a fair silhouette
    s[:, 3, 1] = 50.0 * (hue + 0.05 * rng.normal(size=n))  # a discrete nuisance factor
    return s, y, rng


def test_cluster_criterion_prefers_a_clustered_factor_unrelated_to_the_principal():
    s, y, _ = _toy_latent(4)
    sc = subspace_scores(s, y, alpha=0, margin=1.0, oracle_prob=0.5, seed=0, n_clusters=4)
    assert choose_subspace(sc, "cluster", alpha=0, dead_frac=0.0) == 3
    assert sc["cluster"][1] < 0.1 < sc["cluster"][3]  # the principal copy clusters well but is discounted


def test_diagnostics_never_match_an_identifier_column():
    rng = np.random.default_rng(0)
    aux = rng.integers(0, 4, 500)
    d = diagnostics(aux, rng.integers(0, 3, 500), {"file": np.array([f"img_{i}.png" for i in range(500)]), "hue": aux.copy()})
    assert set(d.factor_scores) == {"hue"} and d.best_factor == "hue"


def test_dead_subspaces_are_the_tiny_ones_other_than_alpha():
    var = np.array([1e-4, 0.5, 0.004, 1.0, 0.01])
    assert dead_subspaces(var, alpha=0, dead_frac=0.01) == [2]  # alpha is never listed; 0.01 x max is live
    assert dead_subspaces(var, alpha=0, dead_frac=0.0) == []
    sc = {"variance": var, "calinski": np.array([0.0, 1.0, 9.0, 2.0, 3.0])}
    assert rank_subspaces(sc, "calinski", 0, 0.01, 3) == [4, 3, 1]  # the best-scoring subspace 2 is skipped


def test_cluster_criterion_with_one_cluster_asked_scores_two():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(300, 3, 2))
    sc = subspace_scores(s, rng.integers(0, 2, 300), alpha=0, margin=1.0, oracle_prob=0.5, seed=0, n_clusters=1)
    assert np.isfinite(sc["cluster"]).all()


def test_calinski_criterion_prefers_tight_clusters_discounts_the_principal_and_ignores_scale():
    s, y, rng = _toy_latent(5)
    s[:, 4] = 1e-3 * s[:, 3] + 0.3e-3 * rng.normal(size=s[:, 3].shape)  # the same factor, smaller and blurred
    sc = subspace_scores(s, y, alpha=0, margin=1.0, oracle_prob=0.5, seed=0, n_clusters=4)
    assert rank_subspaces(sc, "calinski", alpha=0, dead_frac=0.0, n=3) == [3, 4, 2]
    assert sc["calinski"][1] < 0.1 * sc["calinski"][2]  # the principal copy clusters perfectly but is discounted
    assert criterion_margin(sc, "calinski", 0, 0.0) == pytest.approx(sc["calinski"][3] / sc["calinski"][4])
    assert criterion_margin(sc, "l_dist", 0, 0.0) is None  # smallest-wins criteria: no ratio
    scaled = s.copy()
    scaled[:, 3] *= 1e-4
    assert np.isclose(subspace_scores(scaled, y, 0, 1.0, 0.5, 0, n_clusters=4)["calinski"][3], sc["calinski"][3], rtol=1e-6)


def _mixed_latent(n: int = 4000, seed: int = 0):
    """Two independent 10-level nuisance factors and one Gaussian one, linearly mixed into every non-alpha subspace
    (what stage 1 measured on shapes: a hue spread over all of them), the principal alone in alpha."""
    rng = np.random.default_rng(seed)
    y, wall, floor = rng.integers(0, 4, n), rng.integers(0, 10, n), rng.integers(0, 10, n)
    sources = np.stack([wall + 0.05 * rng.normal(size=n), floor + 0.05 * rng.normal(size=n), 3 * rng.normal(size=n)], 1)
    s = np.zeros((n, 4, 3))
    s[:, 0, 0] = y
    s[:, 1:] = (sources @ rng.normal(size=(3, 9))).reshape(n, 3, 3)
    return s, y, {"wall": wall, "floor": floor}


def test_independent_components_unmix_factors_that_no_single_subspace_holds():
    from sklearn.metrics import homogeneity_completeness_v_measure as hcv

    s, y, factors = _mixed_latent()
    for j in (1, 2, 3):  # no subspace holds a factor alone: clustering any one subspace matches neither
        lab = cluster(s[:, j], DiscoverConfig(clusterer="kmeans++", n_clusters=10), 0).labels
        assert max(min(hcv(f, lab)[:2]) for f in factors.values()) < 0.6
    u, loadings = independent_components(s, alpha=0, dead_frac=0.01, seed=0)
    assert u.shape == (len(s), 3) and np.allclose(u.std(0), 1, atol=0.01)
    assert np.allclose(loadings[:, 0], 0) and np.allclose(loadings.sum(1), 1)
    only = s.copy()
    only[:, 2:] = 0.0  # every factor in subspace 1 alone: all of each component's variance is there
    only[:, 2:] += 1e-3 * np.random.default_rng(1).normal(size=only[:, 2:].shape)
    assert (independent_components(only, 0, 0.0, 0)[1][:, 1] > 0.99).all()
    matched = [max(min(hcv(f, cluster(u[:, [c]], DiscoverConfig(clusterer="kmeans++", n_clusters=10), 0).labels)[:2])
                   for f in factors.values()) for c in range(3)]
    assert sorted(matched)[1] > 0.9 and min(matched) < 0.6  # two components are the two factors, one the Gaussian
    s[:, 3] = 0  # a dead subspace is left out, like the subspace criteria do
    assert np.allclose(independent_components(s, 0, 0.01, 0)[1][:, 3], 0)


def test_discover_with_space_ica_writes_labels_and_names_the_component(tmp_path):
    import json

    import pyarrow.parquet as pq

    from detaux_ray.config import load_config
    from detaux_ray.discover.auxiliary import discover
    from detaux_ray.report import _chosen, _where

    s, y, factors = _mixed_latent(n=3000)
    cfg = load_config("quick", ["discover.space=ica"])
    info = discover(s, np.arange(len(s)), np.arange(len(s)), "scale", y, factors, cfg, tmp_path, say=lambda m: None)
    task = info.first
    assert info.space == "ica" and len(info.component_scores["kurtosis"]) == 3
    assert task.component == int(np.argmax(info.component_scores["score"])) and task.subspace in (1, 2, 3)
    assert task.diagnostics.best_factor in factors and min(task.diagnostics.best_scores()[m] for m in ("homogeneity", "completeness")) > 0.9
    assert pq.read_table(tmp_path / "labels.parquet").num_rows == len(s)
    assert pq.read_table(tmp_path / "embeddings.parquet").column("embedding").type.list_size == 1
    assert json.loads((tmp_path / "diagnostics.json").read_text())["auxiliary_tasks"][0]["component"] == task.component
    assert "independent component" in _chosen(info, task) and "component" in _where(task)
    # The subspace criteria's clusterings choose nothing here: left out (only l_dist, dot and the variances).
    assert set(info.subspace_scores) == {"l_dist", "dot", "variance"}


def test_more_auxiliary_tasks_than_independent_components_is_one_clear_error(tmp_path):
    from detaux_ray.config import load_config
    from detaux_ray.discover.auxiliary import discover

    s, y, factors = _mixed_latent(n=1500)  # three components
    cfg = load_config("quick", ["discover.space=ica", "discover.n_auxiliary=4"])
    with pytest.raises(SingleClusterError, match="only 3 independent components"):
        discover(s, np.arange(len(s)), np.arange(len(s)), "scale", y, factors, cfg, tmp_path, say=lambda m: None)
    assert not (tmp_path / "labels.parquet").exists()


def test_a_nuisance_latent_below_the_dead_cut_falls_back_to_every_non_constant_subspace(tmp_path):
    from detaux_ray.config import load_config
    from detaux_ray.discover.auxiliary import discover, nuisance_subspaces

    s, y, factors = _mixed_latent(n=2000)
    s[:, 0] *= 1e4  # alpha far larger than the rest: every other subspace is below the 1% cut
    assert nuisance_subspaces(((s - s.mean(0)) ** 2).sum(-1).mean(0), 0, 0.01) == ([1, 2, 3], True)
    said = []
    cfg = load_config("quick", ["discover.space=ica"])
    task = discover(s, np.arange(len(s)), np.arange(len(s)), "scale", y, factors, cfg, tmp_path, say=said.append).first
    assert any("whole non-alpha latent" in m for m in said)
    assert min(task.diagnostics.best_scores()[m] for m in ("homogeneity", "completeness")) > 0.9  # scale-free: still found
    s[:, 1:] = 0.0
    with pytest.raises(SingleClusterError, match="constant"):
        nuisance_subspaces(((s - s.mean(0)) ** 2).sum(-1).mean(0), 0, 0.01)


def test_discovery_labels_every_image_and_reads_the_principal_only_where_it_is_known(tmp_path):
    import pyarrow.parquet as pq

    from detaux_ray.config import load_config
    from detaux_ray.discover.auxiliary import discover

    s, y, factors = _mixed_latent(n=3000)
    known = np.random.default_rng(0).random(len(s)) < 0.1
    cfg = load_config("quick", ["discover.space=ica"])
    info = discover(s, np.arange(len(s)), np.arange(len(s)), "scale", y, factors, cfg, tmp_path, say=lambda m: None,
                    labelled=known)
    labels = pq.read_table(tmp_path / "labels.parquet").to_pydict()
    assert len(labels["auxiliary"]) == len(s) and min(labels["auxiliary"]) >= 0  # every image has an auxiliary label
    assert np.array_equal(np.asarray(labels["principal"]), np.where(known, y, -1))  # no label read where it is unknown
    assert info.scorecard["n_fit"] + info.scorecard["n_eval"] <= known.sum()  # the scorecard probed labelled rows only
    assert min(info.first.diagnostics.best_scores()[m] for m in ("homogeneity", "completeness")) > 0.9


def test_the_start_whose_classes_stand_apart_as_levels_is_chosen_not_outliers_or_broad_modes():
    """Three unit-variance components: ten crisp levels, two broad modes (kurtosis about -1.5, the lowest) and a
    heavy-tailed one whose outliers stand apart from the rest. Every one is a start; the ten levels win, and the
    outliers' split, a gap however small the class, is never first (its classes carry almost no information)."""
    rng = np.random.default_rng(0)
    n = 6000
    level = rng.integers(0, 10, n)
    modes = np.where(rng.random(n) < 0.5, -1.0, 1.0) + 0.45 * rng.normal(size=n)
    tails = np.where(rng.random(n) < 0.01, 12.0, 0.0) + rng.normal(size=n)
    u = np.stack([tails, modes, level + 0.05 * rng.normal(size=n)], 1)
    u = (u - u.mean(0)) / u.std(0)
    said = []
    starts = component_starts(u, rng.integers(0, 3, n), slice(None), DiscoverConfig(clusterer="kmeans++", n_clusters=0),
                              0, cluster, said.append)
    assert [st.component for st in starts][0] == 2 and starts[-1].component == 0
    assert starts[0].result.n_clusters == 10 and starts[0].levels > 0.9
    assert min(diagnostics(starts[0].result.labels, np.zeros(n, int), {"level": level}).best_scores().values()) > 0.95
    assert len(said) == 3 and all("level separation" in m for m in said)


def test_level_separation_tells_a_factors_levels_from_slices_of_a_continuum():
    from sklearn.cluster import KMeans

    for u, level in (ring_factor(), oblique_factor()):
        slices = KMeans(6, n_init=4, random_state=0).fit_predict(u[:, 2:3])  # a uniform factor cut in six
        assert level_separation(u, level, 0) > 0.8 and level_separation(u, slices, 0) < 0.2
    assert level_separation(u, np.zeros(len(u), int), 0) == 0.0  # one class: nothing stands apart


def test_the_start_score_weighs_the_levels_by_the_information_their_classes_carry():
    even, outliers = np.repeat(np.arange(4), 250), np.r_[np.zeros(990, int), np.ones(10, int)]
    assert start_score(1.0, even, 0.0) == pytest.approx(np.log(4))
    assert start_score(1.0, outliers, 0.0) < 0.1 * start_score(0.5, even, 0.0)
    assert start_score(0.5, even, 1.0) == 0.0  # classes that are the principal's say nothing new


def test_two_starts_that_end_in_the_same_classes_give_one_task():
    from detaux_ray.discover.auxiliary import Start
    from detaux_ray.discover.clustering import ClusterResult

    a, b = np.repeat(np.arange(4), 50), np.tile(np.arange(2), 100)
    starts = [Start(c, ClusterResult(lab, "kmeans++", len(set(lab)), False, {}), 1.0, 0.0, score)
              for c, lab, score in ((0, a, 3.0), (1, a[::-1].copy(), 2.0), (2, b, 1.0))]  # 1: a's classes renamed
    assert [st.component for st in choose_starts(starts, 2)] == [0, 2]
    assert [st.component for st in choose_starts(starts[:2], 2)] == [0, 1]  # none other: the same classes again


def test_subspaces_at_float_noise_are_constant_and_the_error_says_what_was_measured():
    """What a collapsed projector gives (measured on `digits`): every non-alpha coordinate one value plus float32
    summation noise, 2e-9 of alpha's variance. That is 'constant', said with the numbers, not a 1-cluster KMeans."""
    from detaux_ray.discover.auxiliary import nuisance_subspaces

    rng = np.random.default_rng(0)
    s = np.zeros((2000, 4, 3))
    s[:, 0] = rng.normal(0, 0.15, (2000, 3))
    s[:, 1:] = 0.5 + rng.normal(0, 5e-6, (2000, 3, 3))
    with pytest.raises(SingleClusterError, match=r"is constant \(variance 1: .*e-09") as err:
        nuisance_subspaces(((s - s.mean(0)) ** 2).sum(-1).mean(0), alpha=0, dead_frac=0.01)
    # and it names the measured remedy, as keys a rerun can set (docs/studies/2026-12-06-label-dependence.md)
    from detaux_ray.config import load_config

    remedy = [w for w in str(err.value).split() if w.startswith("disentangle.")]
    assert len(remedy) == 1 and load_config("quick", remedy).disentangle.w_dependence > 0
    s[:, 2] += rng.normal(0, 3e-4, (2000, 3))  # 4e-6 of alpha's: tiny, yet live (sprites measured 5e-6)
    assert nuisance_subspaces(((s - s.mean(0)) ** 2).sum(-1).mean(0), alpha=0, dead_frac=0.01) == ([2], True)


def test_refinement_carries_one_components_clusters_to_the_directions_that_separate_a_factors_levels():
    from sklearn.metrics import homogeneity_completeness_v_measure

    from detaux_ray.discover.auxiliary import refine_clusters

    u, level = ring_factor()
    start = cluster(u[:, :1], DiscoverConfig(clusterer="kmeans++", n_clusters=6), 0)
    h0, c0, _ = homogeneity_completeness_v_measure(level, start.labels)
    assert min(h0, c0) < 0.75  # the levels overlap on direction 0: the component alone cannot split them
    labels, iters = refine_clusters(u, start.labels, start.n_clusters, False, seed=0)
    h, c, _ = homogeneity_completeness_v_measure(level, labels)
    assert min(h, c) > 0.95 and 1 <= iters <= 20
    assert set(np.unique(labels)) == set(range(6))


def test_refinement_keeps_noise_as_noise():
    from detaux_ray.discover.auxiliary import refine_clusters

    u, level = ring_factor(2000)
    labels = np.where(np.arange(2000) % 10 == 0, 6, level)  # every 10th row noise (label 6)
    refined, _ = refine_clusters(u, labels.copy(), 6, True, seed=0)
    assert np.array_equal(refined == 6, labels == 6)  # noise rows untouched, no clustered row becomes noise
    assert set(np.unique(refined[labels != 6])) == set(range(6))


def test_discover_refines_the_components_clusters_says_so_and_labels_every_image(tmp_path):
    from detaux_ray.config import load_config
    from detaux_ray.discover.auxiliary import discover

    u, level = ring_factor(3000)
    s = as_subspaces(u)
    said = []
    cfg = load_config("quick", ["discover.n_clusters=6"])
    info = discover(s, np.arange(3000), np.arange(3000), "p", np.zeros(3000, int) + (np.arange(3000) % 2), {"level": level},
                    cfg, tmp_path, say=said.append)
    task = info.first
    assert task.clusterer.endswith("(LDA-refined)") and task.clusterer_params["refine_iterations"] >= 1
    assert any("iterations of LDA and KMeans" in m for m in said)
    assert task.diagnostics.best_factor == "level"
    assert min(task.diagnostics.best_scores()[m] for m in ("homogeneity", "completeness")) > 0.9


def test_recount_reads_the_number_of_levels_on_the_refined_clusters_discriminant():
    from sklearn.metrics import homogeneity_completeness_v_measure

    from detaux_ray.discover.auxiliary import recount_clusters, refine_clusters

    u, level = oblique_factor()
    found = cluster(u[:, :1], DiscoverConfig(clusterer="kmeans++", n_clusters=0), 0)
    assert found.n_clusters < 6  # on direction 0 the levels blur into fewer
    refined, _ = refine_clusters(u, found.labels, found.n_clusters, False, seed=0)
    assert min(homogeneity_completeness_v_measure(level, refined)[:2]) < 0.75
    labels, c, counts = recount_clusters(u, refined, found.n_clusters, seed=0, max_clusters=20)
    assert c == 6 and counts[0] == 6
    assert min(homogeneity_completeness_v_measure(level, labels)[:2]) > 0.95
    # Counted right already: nothing changes.
    again, c2, counts2 = recount_clusters(u, labels, 6, seed=0, max_clusters=20)
    assert c2 == 6 and counts2 == [6] and again is labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recount_keeps_the_round_whose_classes_stand_apart_most_not_the_last(seed):
    """Six levels on a ring, given right: no one direction holds them, so the discriminant's modes are fewer (3-4) and
    each round merges neighbours into slices of the ring. The classes before the first round score highest and are
    the ones returned, whatever the rounds counted."""
    from sklearn.metrics import adjusted_rand_score

    from detaux_ray.discover.auxiliary import recount_clusters

    u, level = ring_factor(4000, seed)
    labels, c, counts = recount_clusters(u, level.copy(), 6, seed=seed, max_clusters=20)
    assert counts and counts[0] < 6  # at least one round ran and counted fewer
    assert c == 6 and adjusted_rand_score(level, labels) > 0.99


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_modes_of_a_mixture_count_fewer_than_its_components_on_skewed_levels(seed):
    """Three levels, each skewed (a gamma with shape 3, like colour_digits' backgrounds along the discriminant): a
    Gaussian mixture's BIC spends several components on each; its density's modes are fewer, never fewer than the
    levels, and each is one level's (the tails can still hold a bump: recount_clusters merges further on the
    whole latent)."""
    from sklearn.metrics import homogeneity_score

    from detaux_ray.discover.clustering import mixture_modes

    rng = np.random.default_rng(seed)
    level = rng.integers(0, 3, 6000)
    z = 8.0 * level + rng.gamma(3.0, 0.6, 6000)
    modes, labels, bic = mixture_modes(z[:, None], 0, 20)
    assert 3 <= modes <= min(bic, key=bic.get) - 2
    assert homogeneity_score(level, labels) > 0.95
    assert np.array_equal(np.unique(labels), np.arange(modes)) and labels[np.argmin(z)] == 0 and labels[np.argmax(z)] == modes - 1


@pytest.mark.slow  # discover() choosing every number from the data: ~20 s
def test_discover_counts_again_only_a_number_it_chose(tmp_path):
    from detaux_ray.config import load_config
    from detaux_ray.discover.auxiliary import discover, refined_clusterer

    u, level = oblique_factor(3000)
    s = as_subspaces(u)
    said = []
    info = discover(s, np.arange(3000), np.arange(3000), "p", np.arange(3000) % 2, {"level": level},
                    load_config("quick", []), tmp_path, say=said.append)
    params = info.first.clusterer_params
    assert params["n_clusters"] == info.first.diagnostics.n_aux_classes == 6
    assert "n_clusters_on_component" in params and params["modes_on_discriminant"][-1] == 6
    assert any(m.startswith(f"start {info.first.component} ") and "modes per round" in m for m in said)
    said = []  # a number the user set is kept
    found = refined_clusterer(cluster, u, said.append)(u[:, :1], DiscoverConfig(clusterer="kmeans++", n_clusters=4), 0)
    assert found.n_clusters == 4 == len(np.unique(found.labels)) and "n_clusters_on_component" not in found.params
    assert not any("counted the classes again" in m for m in said)
