"""Stage-2 clustering backends (no Ray): HDBSCAN (cuML on GPU, `hdbscan` on CPU), KMeans, KMeans++, MeanShift.

All return integer labels 0..C-1 for every point. HDBSCAN's noise points are kept as one extra label (the last),
as the paper does. Large inputs are fitted on a seeded subsample and the rest are labelled by prediction.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..config import DiscoverConfig
from ..errors import ConfigError, SingleClusterError

log = logging.getLogger(__name__)


@dataclass
class ClusterResult:
    labels: np.ndarray  # (N,) int64, 0..C-1; noise (if any) is label C-1
    method: str  # e.g. "hdbscan[cpu]", "hdbscan[cuml]", "kmeans++"
    n_clusters: int  # clusters found, not counting noise
    has_noise_label: bool
    params: dict = field(default_factory=dict)


def cuml_available() -> bool:
    """cuML HDBSCAN is used only when it imports and a CUDA device is visible."""
    try:
        import cupy  # noqa: F401
        import cuml  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _subsample(n: int, size: int, seed: int) -> np.ndarray | None:
    if size <= 0 or n <= size:
        return None
    return np.sort(np.random.default_rng([seed, 7]).choice(n, size=size, replace=False))


def label_by_neighbours(fit_x: np.ndarray, fit_labels: np.ndarray, x: np.ndarray, k: int = 10) -> np.ndarray:
    """Label every point of x by a majority vote of its k nearest fitted points (noise, -1, is a label too).

    An exact KD-tree search (scipy cKDTree, all cores): O(N k log n_fit), a fraction of the cost of
    hdbscan.approximate_predict on large N, and it agrees with it where clusters are dense (bench/label.py).
    """
    from scipy.spatial import cKDTree

    k = min(k, len(fit_x))
    _, nn = cKDTree(fit_x).query(x, k=k, workers=-1)
    votes = fit_labels[nn.reshape(len(x), k)] + 1  # shift so noise (-1) is column 0
    counts = np.zeros((len(x), int(fit_labels.max()) + 2), dtype=np.int32)
    rows = np.arange(len(x))
    for j in range(k):  # no duplicate (row, label) within one column, so plain fancy-index adds are exact
        counts[rows, votes[:, j]] += 1
    # Ties go to the nearest neighbour's label.
    best = counts.max(1, keepdims=True)
    tied = (counts == best).sum(1) > 1
    out = counts.argmax(1) - 1
    out[tied] = votes[tied, 0] - 1
    return out.astype(np.int64)


def _hdbscan_cpu(x: np.ndarray, min_cluster_size: int, min_samples: int, fit_idx: np.ndarray | None,
                 predict: str = "knn", knn_k: int = 10, n_jobs: int = 1) -> np.ndarray:
    import hdbscan

    fit_x = x if fit_idx is None else x[fit_idx]
    clf = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples,
                          prediction_data=fit_idx is not None and predict == "approximate", core_dist_n_jobs=n_jobs)
    clf.fit(fit_x)
    if fit_idx is None:
        return clf.labels_.astype(np.int64)
    if predict == "approximate":
        labels, _ = hdbscan.approximate_predict(clf, x)
        labels = labels.astype(np.int64)
    else:
        labels = label_by_neighbours(fit_x, clf.labels_.astype(np.int64), x, knn_k)
    labels[fit_idx] = clf.labels_  # the fitted points keep their own labels
    return labels


def _hdbscan_cuml(x: np.ndarray, min_cluster_size: int, min_samples: int, fit_idx: np.ndarray | None,
                  predict: str = "knn", knn_k: int = 10) -> np.ndarray:
    # Written against cuML's documented API (cuml.cluster.hdbscan); min_samples must be in [1, 1023]. The rest of
    # the points are labelled as on the CPU: by discover.predict.
    import cupy as cp
    from cuml.cluster import hdbscan as cu_hdbscan

    xg = cp.asarray(x, dtype=cp.float32)
    fit_x = xg if fit_idx is None else xg[cp.asarray(fit_idx)]
    clf = cu_hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=int(min(max(min_samples, 1), 1023)),
                             prediction_data=fit_idx is not None and predict == "approximate")
    clf.fit(fit_x)
    fitted = cp.asnumpy(cp.asarray(clf.labels_)).astype(np.int64)
    if fit_idx is None:
        return fitted
    if predict == "approximate":
        labels, _ = cu_hdbscan.approximate_predict(clf, xg)
        labels = cp.asnumpy(cp.asarray(labels)).astype(np.int64)
    else:
        labels = label_by_neighbours(x[fit_idx], fitted, x, knn_k)
    labels[fit_idx] = fitted
    return labels


def choose_n_clusters(x: np.ndarray, seed: int, max_clusters: int) -> tuple[int, dict[int, float], str]:
    """The data's own number of clusters (a factor with four values in one dataset, ten in another), not a constant.
    On one column (an independent component): the smallest BIC of a Gaussian mixture. The silhouette, used before,
    preferred 2 clusters wherever a factor's levels overlap; BIC still counts them (on the suite's chosen components,
    mean min(H, C) 0.79 against 0.77 on `shapes`, 0.34 against 0.28 on `colour_digits`; it over-split one crisp
    component into 18: docs/studies/2026-12-04-discovery-rules.md).
    On several columns (a subspace): the largest silhouette, since a mixture's BIC there took 15-25 s a subspace and
    gave 7-20 clusters for 10 levels. Returns (c, {c: score}, "bic" | "silhouette")."""
    x = np.asarray(x)
    if x.ndim == 1 or x.shape[1] == 1:
        gm, scores = bic_mixture(x.reshape(len(x), 1), seed, max_clusters)
        return gm.n_components, scores, "bic"
    return (*_silhouette_n_clusters(x, seed, max_clusters), "silhouette")


def _candidates(x: np.ndarray, seed: int, max_clusters: int, n_points: int) -> tuple[np.ndarray, range]:
    """A seeded subsample of x (at most n_points, float64) and the cluster counts [2, max_clusters] it can hold."""
    idx = _subsample(len(x), n_points, seed + 2)
    pts = np.asarray(x if idx is None else x[idx], dtype=np.float64)
    n_distinct = len(np.unique(pts.round(6), axis=0))
    if n_distinct < 3:
        raise SingleClusterError(f"the auxiliary subspace has {n_distinct} distinct point(s): no two clusters to choose "
                                 "between; train the disentanglement longer")
    return pts, range(2, min(max_clusters, n_distinct - 1) + 1)


def bic_mixture(x: np.ndarray, seed: int, max_clusters: int, n_points: int = 3000, patience: int = 4):
    """The Gaussian mixture with c in [2, max_clusters] components of smallest BIC (Schwarz 1978) on a seeded
    subsample of at most n_points (fitted, sklearn's GaussianMixture), and {c: BIC}; the search stops once `patience`
    numbers past the best have all scored worse."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    pts, counts = _candidates(x, seed, max_clusters, n_points)
    scores: dict[int, float] = {}
    best = None
    for c in counts:
        gm = GaussianMixture(c, init_params="k-means++", reg_covar=1e-6 * float(pts.var(0).mean()) + 1e-12,
                             random_state=seed)
        with warnings.catch_warnings():  # an unconverged fit still scores; its BIC is only a little high
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(pts)
        scores[c] = float(gm.bic(pts))
        if best is None or scores[c] < scores[best.n_components]:
            best = gm
        if c - min(scores, key=scores.get) >= patience:  # BIC has risen `patience` times in a row past its minimum
            break
    return best, scores


def mixture_modes(z: np.ndarray, seed: int, max_clusters: int, grid: int = 4096) -> tuple[int, np.ndarray, dict[int, float]]:
    """The modes of the smallest-BIC Gaussian mixture on one column z (N, 1): how many local maxima its density has,
    and each row's mode (the one that the row's most responsible component's mean climbs to on the density).
    Why modes and not components: where a level's distribution is skewed or heavy-tailed, the mixture spends several
    components on it, and BIC counts components; components whose means climb to one mode make one cluster (modal
    merging of mixture components: Li, Ray & Lindsay 2007; Hennig 2010). Returns (modes, labels 0..modes-1 in the
    order of z, {c: BIC})."""
    z = np.asarray(z, dtype=np.float64).reshape(len(z), 1)
    gm, scores = bic_mixture(z, seed, max_clusters)
    xs = np.linspace(z.min(), z.max(), grid)
    dens = gm.score_samples(xs[:, None])  # log density: the same maxima

    def climb(i: int) -> int:
        while True:
            left = dens[i - 1] if i > 0 else -np.inf
            right = dens[i + 1] if i < grid - 1 else -np.inf
            if left <= dens[i] >= right:
                return i
            i = i - 1 if left > right else i + 1

    peak = np.array([climb(int(np.abs(xs - m).argmin())) for m in gm.means_[:, 0]])
    _, of_component = np.unique(peak, return_inverse=True)
    # A mode that is no row's is not counted (a component can be most responsible for none).
    held, labels = np.unique(of_component[gm.predict(z)], return_inverse=True)
    return len(held), labels.astype(np.int64), scores


def _silhouette_n_clusters(x: np.ndarray, seed: int, max_clusters: int, n_points: int = 3000) -> tuple[int, dict[int, float]]:
    """The c in [2, max_clusters] whose KMeans clusters have the largest mean silhouette (Rousseeuw 1987) on a seeded
    subsample of at most n_points."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    pts, counts = _candidates(x, seed, max_clusters, n_points)
    scores: dict[int, float] = {}
    for c in counts:
        lab = KMeans(c, n_init=3, random_state=seed).fit_predict(pts)
        if len(np.unique(lab)) > 1:
            scores[c] = float(silhouette_score(pts, lab))
    if not scores:
        raise SingleClusterError("the auxiliary subspace has no two distinct clusters to choose between; train the "
                                 "disentanglement longer")
    return max(scores, key=scores.get), scores


def cluster(x: np.ndarray, cfg: DiscoverConfig, seed: int, n_jobs: int = 1) -> ClusterResult:
    """Cluster embeddings x (N, d) with cfg.clusterer; raise SingleClusterError if fewer than 2 clusters.
    n_jobs: processes for hdbscan's core distances on the CPU (the labels do not depend on it)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    fit_idx = _subsample(n, cfg.fit_subsample, seed)
    n_fit = n if fit_idx is None else len(fit_idx)
    params: dict = {"n_points": n, "n_fit": n_fit}
    if cfg.clusterer == "hdbscan":
        min_cluster_size = max(2, int(round(cfg.min_cluster_frac * n_fit)))
        params.update(min_cluster_size=min_cluster_size, min_samples=cfg.min_samples)
        use_cuml = cfg.backend == "cuml" or (cfg.backend == "auto" and cuml_available())
        if cfg.backend == "cuml" and not cuml_available():
            raise ConfigError("discover.backend=cuml but cuML is not importable or no GPU is visible; "
                              "install the 'gpu' extra on a GPU machine or use backend=auto")
        if use_cuml:
            raw = _hdbscan_cuml(x, min_cluster_size, cfg.min_samples, fit_idx, cfg.predict, cfg.knn_k)
        else:
            raw = _hdbscan_cpu(x, min_cluster_size, cfg.min_samples, fit_idx, cfg.predict, cfg.knn_k, n_jobs)
            params.update(n_jobs=n_jobs)
        params.update(predict=cfg.predict if fit_idx is not None else "none")
        method = f"hdbscan[{'cuml' if use_cuml else 'cpu'}]"
        has_noise = bool((raw < 0).any())
        n_clusters = int(raw.max()) + 1 if (raw >= 0).any() else 0
        labels = np.where(raw < 0, n_clusters, raw)
    elif cfg.clusterer in ("kmeans", "kmeans++"):
        from sklearn.cluster import KMeans

        init = "k-means++" if cfg.clusterer == "kmeans++" else "random"
        c = cfg.n_clusters
        if c == 0:  # chosen from the data
            c, scores, by = choose_n_clusters(x, seed, cfg.max_clusters)
            params.update(n_clusters_chosen_by=by, **{by: {int(k): round(v, 4) for k, v in scores.items()}})
        km = KMeans(n_clusters=c, init=init, n_init=10, random_state=seed)
        km.fit(x if fit_idx is None else x[fit_idx])
        labels = km.predict(x).astype(np.int64)
        method, has_noise, n_clusters = cfg.clusterer, False, int(len(np.unique(labels)))
        params.update(n_clusters=c, init=init)
    elif cfg.clusterer == "meanshift":
        from sklearn.cluster import MeanShift, estimate_bandwidth

        # estimate_bandwidth is quadratic: estimate it on at most 2,000 points.
        est_idx = _subsample(n, 2000, seed + 1)
        bw = float(estimate_bandwidth(x if est_idx is None else x[est_idx], quantile=cfg.meanshift_quantile, random_state=seed))
        if bw <= 0:
            raise SingleClusterError("MeanShift: the estimated bandwidth is 0 (all embeddings coincide): one cluster")
        ms = MeanShift(bandwidth=bw, bin_seeding=True)
        ms.fit(x if fit_idx is None else x[fit_idx])
        labels = ms.predict(x).astype(np.int64)
        method, has_noise, n_clusters = "meanshift", False, int(len(np.unique(labels)))
        params.update(bandwidth=bw, quantile=cfg.meanshift_quantile)
    else:  # validated in config, kept for direct callers
        raise ConfigError(f"unknown clusterer '{cfg.clusterer}'")

    if n_clusters < 2:
        raise SingleClusterError(
            f"{method} found {n_clusters} cluster(s) in the auxiliary subspace ({n} points, params {params}): "
            "the auxiliary task would carry no information, so the run stops here (no MTL stage). "
            "Try a smaller discover.min_cluster_frac, another discover.clusterer, or a longer disentanglement.")
    # Renumber densely so label ids are 0..C-1 with noise last.
    _, labels = np.unique(labels, return_inverse=True)
    return ClusterResult(labels.astype(np.int64), method, n_clusters, has_noise, params)
