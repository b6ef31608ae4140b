"""The clusterers (detaux_ray.discover.clustering): real HDBSCAN, KMeans, KMeans++, MeanShift on known blobs."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from detaux_ray.config import DiscoverConfig
from detaux_ray.discover.clustering import cluster
from detaux_ray.errors import SingleClusterError


def blobs(n_per=300, centres=4, noise=40, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(0, 10, size=(centres, 3))
    x = np.concatenate([c[i] + rng.normal(0, 0.3, size=(n_per, 3)) for i in range(centres)])
    y = np.repeat(np.arange(centres), n_per)
    x = np.concatenate([x, rng.uniform(-25, 25, size=(noise, 3))])
    return x, np.concatenate([y, np.full(noise, -1)])


@pytest.mark.parametrize("clusterer", ["hdbscan", "kmeans", "kmeans++", "meanshift"])
def test_clusterers_recover_blobs(clusterer):
    x, y = blobs()
    res = cluster(x, DiscoverConfig(clusterer=clusterer, n_clusters=4, min_cluster_frac=0.05, meanshift_quantile=0.1), seed=0)
    core = y >= 0
    assert adjusted_rand_score(y[core], res.labels[core]) > 0.95
    assert res.labels.min() == 0 and res.labels.max() == len(np.unique(res.labels)) - 1
    if clusterer == "hdbscan":
        assert res.method == "hdbscan[cpu]" and res.n_clusters == 4 and res.has_noise_label
        assert res.labels[~core].max() == 4  # noise kept as its own, last label


def test_hdbscan_subsample_then_predict_labels_every_point():
    x, y = blobs(n_per=500)
    res = cluster(x, DiscoverConfig(min_cluster_frac=0.05, fit_subsample=800), seed=0)
    assert len(res.labels) == len(x) and res.params["n_fit"] == 800
    assert adjusted_rand_score(y[y >= 0], res.labels[y >= 0]) > 0.95


def test_single_cluster_is_an_error():
    x = np.random.default_rng(0).normal(size=(500, 2))
    with pytest.raises(SingleClusterError, match="found 1 cluster"):
        cluster(x, DiscoverConfig(clusterer="kmeans", n_clusters=1), seed=0)
    with pytest.raises(SingleClusterError, match="no MTL stage"):
        cluster(x, DiscoverConfig(min_cluster_frac=0.45), seed=0)


def test_the_number_of_kmeans_clusters_is_chosen_from_the_data():
    from detaux_ray.discover.clustering import choose_n_clusters

    rng = np.random.default_rng(0)
    for centres in (3, 4, 7):  # on a circle: every two centres at least as far apart as neighbours
        angle = 2 * np.pi * np.arange(centres) / centres
        c = np.stack([10 * np.cos(angle), 10 * np.sin(angle), np.zeros(centres)], 1)
        y = np.repeat(np.arange(centres), 200)
        x = c[y] + rng.normal(0, 0.5, (len(y), 3))
        assert choose_n_clusters(x, seed=0, max_clusters=12)[::2] == (centres, "silhouette")
        res = cluster(x, DiscoverConfig(clusterer="kmeans++", n_clusters=0, max_clusters=12), seed=0)
        assert res.n_clusters == centres and res.params["n_clusters_chosen_by"] == "silhouette"
        assert adjusted_rand_score(y, res.labels) > 0.99
    one_d = np.repeat(np.arange(5.0), 200)[:, None] + np.random.default_rng(0).normal(0, 0.05, (1000, 1))
    assert choose_n_clusters(one_d, seed=0, max_clusters=20)[::2] == (5, "bic")  # a 1-D factor with five levels
    # Six levels that overlap (spacing 1, spread 0.3 each): BIC still counts six, the silhouette takes fewer.
    blurred = np.repeat(np.arange(6.0), 500)[:, None] + np.random.default_rng(1).normal(0, 0.3, (3000, 1))
    assert choose_n_clusters(blurred, seed=0, max_clusters=20)[0] == 6
    from detaux_ray.discover.clustering import _silhouette_n_clusters
    assert _silhouette_n_clusters(blurred, seed=0, max_clusters=20)[0] < 6
    with pytest.raises(SingleClusterError, match="distinct point"):
        choose_n_clusters(np.zeros((100, 2)), seed=0, max_clusters=10)
