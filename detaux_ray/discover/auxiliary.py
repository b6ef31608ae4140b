"""Stage-2 core (no Ray): choose the auxiliary subspace, cluster it, and the diagnostics of the discovered labels.

`discover` is the whole stage on the stage-1 embeddings; the Ray layer only computes the embeddings."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import chi2_contingency
from sklearn import metrics

from ..artifacts import write_json, write_with
from ..config import CONSTANT_LATENT_REMEDY, Config, DiscoverConfig
from ..disentangle.pairs import sample_pairs
from ..disentangle.scorecard import heatmap, is_identifier, scorecard
from ..errors import ConstantLatentError, SingleClusterError
from ..results import AuxiliaryTask, Diagnostics, DiscoverResult
from .clustering import ClusterResult, choose_n_clusters, cluster, mixture_modes

EVAL_EPOCH = 1_000_000  # pair-sampling stream for evaluation, disjoint from every training epoch


HIGHER_WINS = {"cluster", "calinski"}  # criteria where the largest score wins; the others: smallest wins


def subspace_scores(s: np.ndarray, principal_labels: np.ndarray, alpha: int, margin: float, oracle_prob: float,
                    seed: int, n_pairs: int = 20000, n_clusters: int = 10, n_cluster_points: int = 3000,
                    max_clusters: int = 20, clusters: bool = True) -> dict[str, np.ndarray]:
    """Per-subspace scores for every criterion over embeddings s (N, k, d).

    l_dist[i]: the subspace-i term of L_dist on evaluation pairs drawn as in training, with the oracle's hard
      choice (alpha when the labels differ, else the farthest other subspace; paper's criterion: smallest wins).
    dot[i]:    mean |<s_i, s_alpha>| over the images (authors' code: closest to 0 wins).
    cluster[i]: silhouette(KMeans_c(s_i)) * (1 - NMI(principal, KMeans_c(s_i))) on a seeded subsample: how well
      subspace i splits into c groups, discounted by how much those groups say about the principal task. Free of
      the subspace's scale (both factors are), so it cannot favour a shrunken subspace; largest wins.
    calinski[i]: B/W * (1 - NMI(principal, KMeans_c(s_i))) on the same clusters, where B and W are the between- and
      within-cluster sums of squares (B/W is the Calinski-Harabasz index without its (n - c)/(c - 1) factor, which is
      the same for every subspace). Scale-free like `cluster`, but unlike the silhouette, which sits near 0.45-0.6
      for any KMeans partition of a continuous latent, B/W grows steeply as the clusters tighten: on the quick
      preset it picked the subspace whose labels best match a hidden factor at 5 of 6 seeds, `cluster` at 3
      (docs/studies/2026-11-28-stage1-study.md); largest wins.
    variance[i]: total variance of subspace i (used to skip dead subspaces, which trivially score 0 on both).

    clusters=False leaves out `cluster` and `calinski` (discover.space=ica chooses by the components, not by them;
    with n_clusters=0 choosing each subspace's number of groups took ~11 s of README's discovery).
    """
    from sklearn.cluster import KMeans
    n, k, _ = s.shape
    i1, i2, same = sample_pairs(principal_labels, min(n_pairs, 4 * n), oracle_prob, seed, epoch=EVAL_EPOCH)
    d2 = ((s[i1] - s[i2]) ** 2).sum(-1)  # (P, k)
    spread = 2.0 * _variance(s)  # mean pairwise sq distance (k,)
    norm_d = d2 / np.maximum(spread, 1e-12)
    masked = np.where(np.arange(k) == alpha, -np.inf, norm_d)
    choice = np.where(same, masked.argmax(1), alpha)
    lam = np.eye(k)[choice]
    delta = np.sqrt(d2)
    l_dist = ((1 - lam) * d2 + lam * np.maximum(margin - delta, 0) ** 2).mean(0)
    dot = np.abs((s * s[:, alpha : alpha + 1]).sum(-1)).mean(0)
    if not clusters:
        return {"l_dist": l_dist, "dot": dot, "variance": spread / 2.0}
    sub = np.random.default_rng([seed, 13]).permutation(n)[:n_cluster_points]
    quality, calinski = np.zeros(k), np.zeros(k)
    for i in range(k):
        x = s[sub, i].astype(np.float64)
        if spread[i] <= 1e-12 or len(np.unique(x.round(6), axis=0)) <= max(2, n_clusters):
            continue
        c = n_clusters or choose_n_clusters(x, seed, max_clusters)[0]  # 0: each subspace's own number of groups
        km = KMeans(max(2, c), n_init=2, random_state=seed).fit(x)
        lab = km.labels_
        if len(np.unique(lab)) < 2:  # no split at all: nothing to score
            continue
        independent = 1.0 - metrics.normalized_mutual_info_score(principal_labels[sub], lab)
        quality[i] = metrics.silhouette_score(x, lab) * independent
        total = float(((x - x.mean(0)) ** 2).sum())
        within = max(float(km.inertia_), 1e-12 * total)
        calinski[i] = (total - within) / within * independent
    return {"l_dist": l_dist, "dot": dot, "cluster": quality, "calinski": calinski, "variance": spread / 2.0}


def independent_components(s: np.ndarray, alpha: int, dead_frac: float, seed: int, var_cut: float = 1e-3,
                            fit_points: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Independent components of the nuisance latent (ours; discover.space=ica).

    X = [s_j for every live subspace j != alpha] (N, m*d), centred. PCA keeps the c >= 2 directions that each hold
    more than var_cut of X's variance; FastICA (logcosh contrast) unmixes them into c components u = W x, each of
    unit variance, fitted on at most fit_points seeded rows. Why: when the data's factors are independent and the
    encoder mixes them linearly across subspaces (measured on shapes: a hue spread over every non-alpha subspace,
    the whole nuisance latent 2-3 dimensional), the components recover the factors one by one where no single
    subspace holds one.

    Returns u (N, c) and loadings (c, k): the share of component c's variance in X that lies in subspace j, from the
    mixing matrix A (x = A u): |A_jc|^2 summed over subspace j's coordinates, over the sum for all j (0 on alpha and
    on dead subspaces)."""
    from sklearn.decomposition import PCA, FastICA
    from sklearn.exceptions import ConvergenceWarning

    n, k, d = s.shape
    live, _ = nuisance_subspaces(_variance(s), alpha, dead_frac)
    x = s[:, live].reshape(n, -1).astype(np.float64)
    x -= x.mean(0)
    fit = np.random.default_rng([seed, 17]).permutation(n)[:fit_points]
    ratio = PCA(random_state=seed).fit(x[fit]).explained_variance_ratio_
    c = int(min(max(2, (ratio > var_cut).sum()), x.shape[1]))
    ica = FastICA(n_components=c, whiten="unit-variance", random_state=seed, max_iter=2000, tol=1e-5)
    with warnings.catch_warnings():  # said below in one line, not as scikit-learn's two-line warning
        warnings.simplefilter("ignore", ConvergenceWarning)
        ica.fit(x[fit])
    if ica.n_iter_ >= ica.max_iter:
        logging.getLogger(__name__).warning(
            f"FastICA did not converge in {ica.max_iter} iterations on the nuisance latent ({c} components): the "
            "components are approximate; a longer stage 1 (disentangle.epochs) usually gives a cleaner latent")
    u = ica.transform(x)
    w2 = (ica.mixing_.T ** 2).reshape(c, len(live), d).sum(-1)
    loadings = np.zeros((c, k))
    loadings[:, live] = w2 / w2.sum(1, keepdims=True)
    return u, loadings


def refine_clusters(u: np.ndarray, labels: np.ndarray, n_clusters: int, has_noise: bool, seed: int,
                    max_iter: int = 20, fit_points: int = 50000) -> tuple[np.ndarray, int]:
    """Discriminant k-means (ours; every discover.space=ica run): the clusters found on one independent component, carried to
    the whole linear subspace of the nuisance latent u (N, c) that tells them apart. Repeat: project u onto the
    min(C - 1, c) directions that best separate the current C clusters (LDA: between- over within-cluster scatter),
    re-cluster that projection with KMeans into C, until the partition changes by less than ARI 0.99 or max_iter.
    Fitted on at most fit_points seeded rows, every row then assigned; noise (label n_clusters when has_noise, as
    `clustering.cluster` writes it) stays noise.

    Why: a factor with several levels need not lie on one line. On colour_digits the four backgrounds are told apart
    linearly at 0.97 by the nuisance latent's first three directions together and by no single component (the best
    one's clusters at 0.34-0.46); the refinement takes them to 0.51-0.60 (docs/studies/2026-12-06-multi-dimensional-factors.md).
    Returns the refined labels (0..n_clusters-1, and the noise label) and the iterations run."""
    from sklearn.cluster import KMeans
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    labels = np.asarray(labels).copy()
    rows = np.flatnonzero(labels != n_clusters) if has_noise else np.arange(len(labels))
    fit = np.random.default_rng([seed, 19]).permutation(len(rows))[:fit_points]
    x, lab = u[rows].astype(np.float64), labels[rows]
    it = 0
    for it in range(1, max_iter + 1):
        present = np.unique(lab[fit])
        if len(present) < 2:
            break
        lda = LinearDiscriminantAnalysis(n_components=min(len(present) - 1, x.shape[1])).fit(x[fit], lab[fit])
        proj = lda.transform(x)
        km = KMeans(n_clusters, n_init=4, random_state=seed).fit(proj[fit])
        new = km.predict(proj).astype(labels.dtype)
        done = metrics.adjusted_rand_score(lab[fit], new[fit]) > 0.99
        lab = new
        if done:
            break
    labels[rows] = lab
    return labels, it


def recount_clusters(u: np.ndarray, labels: np.ndarray, n_clusters: int, seed: int, max_clusters: int,
                     fit_points: int = 50000, max_rounds: int = 10) -> tuple[np.ndarray, int, list[int]]:
    """The number of classes counted again where the refined clusters stand furthest apart (ours; discover.space=ica
    when the number is chosen from the data). z = u's first discriminant direction of the refined clusters (LDA);
    c = the modes of the smallest-BIC Gaussian mixture on z (`clustering.mixture_modes`); if c differs from the
    current number, the rows go to their mode's cluster and are refined in u (`refine_clusters`). Repeated on the new
    clusters' discriminant while the number falls (the modes of merged clusters can merge further); at most
    max_rounds. Noise-free labels only (KMeans'): the count is HDBSCAN's own otherwise.

    Why: the count read on the chosen component is blurred where the factor's levels overlap on it (shapes: 4-6
    classes for a 10-level hue at three seeds of six), and over-split where a level is skewed or heavy-tailed on it
    (colour_digits: 10-15 for 4 backgrounds, each a sharp peak with a long tail along the direction). On the suite's
    runs the refined clusters' first discriminant held 0.95-1.0 of their between-cluster variance, and a factor's
    own levels too (LDA on the known background, floor / wall hue: 0.97-1.0): the levels lie along one direction of
    the within-cluster metric, each one mode there. A factor whose levels lie on a ring, in no one direction, is not
    counted better by it (docs/studies/2026-12-06-multi-dimensional-factors.md, section 5). Of the classes it had
    before the first round and after each, it returns those of largest `start_score` (without the principal).
    Returns (labels, the number of classes, the number of modes found in each round)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    fit = np.random.default_rng([seed, 23]).permutation(len(u))[:fit_points]
    x = u.astype(np.float64)
    counts: list[int] = []
    rounds = [(labels, n_clusters)]
    for _ in range(max_rounds):
        if len(np.unique(labels[fit])) < 2:
            break
        z = LinearDiscriminantAnalysis(n_components=1).fit(x[fit], labels[fit]).transform(x)
        c, modes, _ = mixture_modes(z, seed, max_clusters)
        counts.append(c)
        if c < 2 or c == n_clusters or (len(counts) > 1 and c > n_clusters):  # after the first round: merges only
            break
        labels, _ = refine_clusters(u, modes.astype(labels.dtype), c, False, seed, fit_points=fit_points)
        n_clusters = c
        rounds.append((labels, n_clusters))
    if len(rounds) == 1:
        return labels, n_clusters, counts
    # The round whose classes stand apart most as levels (the start's score without the principal: the rounds can
    # swing, e.g. 10, 8, 10 modes on a ten-level hue; docs/studies/2026-12-07-discovery-start.md)
    labels, n_clusters = max(rounds, key=lambda r: start_score(level_separation(u, r[0], seed), r[0], 0.0))
    return labels, n_clusters, counts


def level_separation(u: np.ndarray, labels: np.ndarray, seed: int, n_points: int = 2000, grid: int = 33) -> float:
    """How far the classes stand apart as a factor's levels rather than as slices of a continuum, in [0, 1] (ours).

    In u (N, c) whitened by the pooled within-class covariance, each class a and its nearest class b (by centre):
    their rows (at most n_points, seeded) projected on the line from a's centre to b's, the Gaussian KDE of that
    projection on `grid` points between the two centres, and r_a = its lowest value there over the lower of its values
    at the two centres (0: an empty gap between the classes; 1: no dip, as where KMeans cuts a uniform factor in
    slices). Returns 1 - mean_a r_a. Why: KMeans' between- over within-class separation is as large for slices of a
    continuous factor as for separated levels (docs/studies/2026-12-06-multi-dimensional-factors.md, section 7);
    a density dip between neighbours is what levels have and slices do not."""
    from scipy.stats import gaussian_kde

    u = np.asarray(u, dtype=np.float64)
    ids, of = np.unique(labels, return_inverse=True)
    if len(ids) < 2:
        return 0.0
    centres = np.stack([u[of == i].mean(0) for i in range(len(ids))])
    within = np.atleast_2d(np.cov((u - centres[of]).T)) + 1e-9 * np.eye(u.shape[1])
    z = u @ np.linalg.cholesky(np.linalg.inv(within))  # within-class covariance -> identity
    cz = np.stack([z[of == i].mean(0) for i in range(len(ids))])
    dist = ((cz[:, None] - cz[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    rng = np.random.default_rng([seed, 29])
    ratios = []
    for a, b in enumerate(dist.argmin(1)):
        rows = rng.permutation(np.flatnonzero((of == a) | (of == b)))[:n_points]
        step = cz[b] - cz[a]
        t = (z[rows] - cz[a]) @ (step / np.linalg.norm(step))
        if np.ptp(t) <= 0:
            ratios.append(1.0)
            continue
        f = gaussian_kde(t)(np.linspace(0.0, float(np.linalg.norm(step)), grid))
        ratios.append(float(f.min() / max(min(f[0], f[-1]), 1e-300)))
    return 1.0 - float(np.mean(np.minimum(ratios, 1.0)))


@dataclass(eq=False)  # starts are told apart by identity (their labels are arrays)
class Start:
    """What discovery ends with from one independent component as its start (`component_starts`)."""

    component: int
    result: ClusterResult  # the clusterer's classes on the component, refined and recounted in the whole nuisance latent
    levels: float  # level_separation of those classes
    nmi: float  # NMI(principal, classes) on the labelled rows
    score: float  # levels x entropy(classes) x (1 - nmi): largest wins (`start_score`)


def start_score(levels: float, labels: np.ndarray, nmi: float) -> float:
    """levels x H(classes) x (1 - NMI): classes that stand apart as a factor's levels (`level_separation`), weighted
    by the information the classes carry (H, the entropy of their proportions in nats: ln C for C evenly used
    levels, near 0 for a split that cuts a few outliers off), discounted by what they say about the principal task.
    Why: from every component as the start, the one whose classes stand apart as levels, not slices, ended nearest
    the best start on the suite, where the rule on the component alone (sub-Gaussian, largest calinski) lost up to
    0.6 at a seed; H keeps ten evenly used hue levels over eight that stand a little further apart, and an outlier
    split (a gap, so levels near 1) out (docs/studies/2026-12-07-discovery-start.md)."""
    p = np.unique(labels, return_counts=True)[1] / len(labels)
    return float(levels * -(p * np.log(p)).sum() * (1.0 - nmi))


def component_starts(u: np.ndarray, principal: np.ndarray, labelled: slice | np.ndarray, disc: DiscoverConfig,
                     seed: int, clusterer: Clusterer, say: Callable[[str], None] = print) -> list[Start]:
    """Every independent component of u (N, c) as discovery's start (ours; discover.space=ica): the clusterer on the
    component, refined and recounted in the whole nuisance latent (`refined_clusterer`), and the classes it ends with
    scored by `start_score` (the principal read on the `labelled` rows, whose labels are `principal`). A component
    the clusterer finds one cluster on is no start; if none is, its error. Returns the starts, best first."""
    from scipy.stats import kurtosis

    chain = refined_clusterer(clusterer, u, lambda m: None)
    kurt = kurtosis(u, axis=0)
    starts, first_error = [], None
    for c in range(u.shape[1]):
        try:
            found = chain(u[:, c : c + 1], disc, seed)
        except SingleClusterError as e:
            first_error = first_error or e
            say(f"start {c}: one cluster on this component, no start")
            continue
        rows = found.labels != found.n_clusters if found.has_noise_label else slice(None)
        levels = level_separation(u[rows], found.labels[rows], seed)
        nmi = float(metrics.normalized_mutual_info_score(principal, found.labels[labelled]))
        starts.append(Start(c, found, levels, nmi, start_score(levels, found.labels[rows], nmi)))
        p = found.params
        count = (f"{p['n_clusters_on_component']} on the component, modes per round {p['modes_on_discriminant']}"
                 if "modes_on_discriminant" in p else "")
        say(f"start {c} (kurtosis {kurt[c]:.2f}): {found.n_clusters} classes{f' ({count})' if count else ''}, refined "
            f"in {p['refine_iterations']} iterations of LDA and KMeans; level separation {levels:.2f}, NMI with the "
            f"principal {nmi:.3f}, score {starts[-1].score:.3f}")
    if not starts:
        raise first_error
    return sorted(starts, key=lambda st: -st.score)


def choose_starts(starts: list[Start], n: int, same: float = 0.9) -> list[Start]:
    """The n best starts whose classes differ (adjusted Rand index <= `same` with every one taken before: two starts
    often end in the same classes), then, if fewer differ, the best of the rest."""
    taken: list[Start] = []
    for st in starts:
        if len(taken) < n and all(metrics.adjusted_rand_score(t.result.labels, st.result.labels) <= same for t in taken):
            taken.append(st)
    return taken + [st for st in starts if st not in taken][: n - len(taken)]


def _task_score(x: np.ndarray, task: AuxiliaryTask, columns: dict, labelled: slice | np.ndarray, principal: np.ndarray,
                seed: int) -> float:
    """`start_score` of a task's classes on the points x it clustered (discover.space=subspace), noise left out."""
    labels = columns[task.task]
    rows = labels != labels.max() if task.has_noise_label else slice(None)
    nmi = float(metrics.normalized_mutual_info_score(principal, labels[labelled]))
    return start_score(level_separation(x[rows], labels[rows], seed), labels[rows], nmi)


def _variance(s: np.ndarray) -> np.ndarray:
    """Total variance of each subspace of s (N, k, d): (k,). In float64: in float32 the mean of a constant column is
    off by rounding, which gave a constant subspace up to 1e-8 of a barely trained alpha's variance."""
    s = np.asarray(s, dtype=np.float64)
    return ((s - s.mean(0, keepdims=True)) ** 2).sum(-1).mean(0)


def choose_subspace(scores: dict[str, np.ndarray], criterion: str, alpha: int, dead_frac: float) -> int:
    """The best live subspace j != alpha by the criterion's score."""
    return rank_subspaces(scores, criterion, alpha, dead_frac, 1)[0]


def dead_subspaces(variance, alpha: int, dead_frac: float) -> list[int]:
    """The subspaces j != alpha whose variance is below dead_frac x the largest: never chosen. A scale-free probe
    can still read a factor in one (docs/studies/2026-11-28-stage1-study.md), so the log and the report name them."""
    var = np.asarray(variance, dtype=float)
    return [j for j in range(len(var)) if j != alpha and var[j] < dead_frac * var.max()]


# A subspace whose variance is below this share of the largest is constant: it holds nothing. Measured: a projector
# whose units had all died gave 2e-9 of alpha's (float32 summation-order noise; one distinct value per coordinate,
# `digits`), the smallest live subspace measured 5e-6 (`sprites`; docs/studies/2026-12-04-discovery-rules.md).
CONSTANT = 1e-8


def nuisance_subspaces(variance, alpha: int, dead_frac: float) -> tuple[list[int], bool]:
    """The subspaces j != alpha that discovery considers, and whether it fell back: the live ones (variance >=
    dead_frac x the largest), or when every one is below that cut, every one that is not constant (the whole
    non-alpha latent: the choice is scale-free, and a subspace far smaller than alpha can still hold a factor)."""
    var = np.asarray(variance, dtype=float)
    dead = dead_subspaces(var, alpha, dead_frac)
    live = [j for j in range(len(var)) if j != alpha and j not in dead]
    if live:
        return live, False
    rest = [j for j in range(len(var)) if j != alpha and var[j] > CONSTANT * var.max()]
    if not rest:
        ratios = ", ".join(f"{j}: {var[j] / var.max():.1e}" for j in range(len(var)) if j != alpha)
        remedy = " ".join(f"--set {o}" for o in CONSTANT_LATENT_REMEDY)
        raise ConstantLatentError(f"every subspace other than the principal one ({alpha}) is constant (variance {ratios} "
                                  "of the largest): stage 1 encoded nothing outside alpha, so there is nothing to "
                                  f"discover (the adversary's confusion term is lowest for a constant subspace); rerun "
                                  f"with {remedy} (docs/method.md)")
    return rest, True


def rank_subspaces(scores: dict[str, np.ndarray], criterion: str, alpha: int, dead_frac: float, n: int) -> list[int]:
    """The n live subspaces j != alpha with the best criterion score (smallest, or largest for HIGHER_WINS), best first."""
    live, _ = nuisance_subspaces(scores["variance"], alpha, dead_frac)
    if len(live) < n:
        raise SingleClusterError(f"{n} auxiliary tasks asked for (discover.n_auxiliary) but only {len(live)} live "
                                 f"subspace(s) besides the principal one: lower n_auxiliary or raise k")
    sign = -1.0 if criterion in HIGHER_WINS else 1.0
    return [int(j) for j in sorted(live, key=lambda j: sign * scores[criterion][j])[:n]]


def criterion_margin(scores: dict[str, np.ndarray], criterion: str, alpha: int, dead_frac: float) -> float | None:
    """score(best) / score(runner-up) among the live subspaces j != alpha, for the largest-wins criteria (None for
    the others, or with one live subspace): how clearly one subspace stands out. On the quick preset's six seeds
    (docs/studies/2026-11-28-stage1-study.md) the `calinski` margin was >= 1.7 at the three seeds whose labels matched a hidden factor
    at >= 0.8, and <= 1.16 at the three where they matched at <= 0.52."""
    if criterion not in HIGHER_WINS:
        return None
    try:
        best, second = rank_subspaces(scores, criterion, alpha, dead_frac, 2)
    except SingleClusterError:
        return None
    runner_up = float(scores[criterion][second])
    return float(scores[criterion][best]) / runner_up if runner_up > 0 else None  # an unscored runner-up: no ratio


def auxiliary_tasks(n: int) -> list[str]:
    """Task names of n discovered tasks: auxiliary, auxiliary_1, ..."""
    return ["auxiliary"] + [f"auxiliary_{i}" for i in range(1, n)]


def diagnostics(aux: np.ndarray, principal: np.ndarray, factors: dict[str, np.ndarray] | None = None,
                labelled: np.ndarray | None = None) -> Diagnostics:
    """Table-3 style diagnostics of the auxiliary labels.

    NMI / AMI against the principal labels (low = unrelated tasks) and the chi-square test of independence on their
    contingency table, on the `labelled` rows (all when None); the class sizes and homogeneity / completeness against
    every known ground-truth factor on every row (the factors are known for each image, labelled or not).
    """
    ids, sizes = np.unique(aux, return_counts=True)
    lab = slice(None) if labelled is None else np.asarray(labelled, bool)
    aux_l, principal = aux[lab], principal[lab]
    table = metrics.cluster.contingency_matrix(principal, aux_l)
    chi2, p_value, dof, _ = chi2_contingency(table)
    scores = {}
    for name, values in (factors or {}).items():
        if is_identifier(values):  # homogeneity against an id is trivially 1: never a "best match"
            continue
        h, c, v = metrics.homogeneity_completeness_v_measure(values, aux)
        scores[name] = {"homogeneity": float(h), "completeness": float(c), "v_measure": float(v)}
    return Diagnostics(
        n_aux_classes=int(len(ids)),
        cluster_sizes={int(i): int(c) for i, c in zip(ids, sizes)},
        nmi_principal_aux=float(metrics.normalized_mutual_info_score(principal, aux_l)),
        ami_principal_aux=float(metrics.adjusted_mutual_info_score(principal, aux_l)),
        chi2=float(chi2), chi2_dof=int(dof), chi2_p_value=float(p_value),
        factor_scores=scores,
        best_factor=max(scores, key=lambda f: scores[f]["v_measure"]) if scores else None,
    )


Clusterer = Callable[[np.ndarray, DiscoverConfig, int], ClusterResult]  # (points, config, seed) -> labels


def cluster_and_diagnose(x: np.ndarray, disc: DiscoverConfig, seed: int, principal: np.ndarray,
                         factors: dict[str, np.ndarray], what: str, say: Callable[[str], None] = print,
                         labelled: np.ndarray | None = None, clusterer: Clusterer = cluster) -> tuple[ClusterResult, Diagnostics]:
    """Cluster the points x (N, d) with discover.clusterer and diagnose the labels against the principal task and
    the known factors (against the principal on the `labelled` rows only: `diagnostics`). `clusterer` runs
    `clustering.cluster` here or elsewhere (the pipeline: a Ray task where the GPU or the cores are)."""
    say(f"{what}: clustering {len(x)} points with {disc.clusterer}")
    t0 = time.time()
    result = clusterer(x, disc, seed)
    say(f"{result.method} found {result.n_clusters} clusters{' + noise' if result.has_noise_label else ''} "
        f"in {time.time() - t0:.1f}s")
    return result, diagnostics(result.labels, principal, factors, labelled)


def nuisance_components(s: np.ndarray, alpha: int, disc: DiscoverConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """discover.space=ica's latent: the independent components u (N, c) of the nuisance latent and their loadings
    (`independent_components`), at least discover.n_auxiliary of them."""
    u, loadings = independent_components(s, alpha, disc.dead_subspace_frac, seed, disc.ica_var_cut)
    if u.shape[1] < disc.n_auxiliary:
        raise SingleClusterError(f"{disc.n_auxiliary} auxiliary tasks asked for (discover.n_auxiliary) but the "
                                 f"nuisance latent has only {u.shape[1]} independent components above "
                                 f"discover.ica_var_cut = {disc.ica_var_cut}: lower one of them")
    return u, loadings


def refined_clusterer(clusterer: Clusterer, u: np.ndarray, say: Callable[[str], None], recount: bool = True) -> Clusterer:
    """`clusterer`, its clusters then refined in the whole nuisance latent u (`refine_clusters`) and, where their
    number was chosen from the data (KMeans with discover.n_clusters = 0), counted again on the refined clusters'
    first discriminant (`recount_clusters`; `recount=False`: not, the rule before it, for the discovery bench)."""
    def run(x: np.ndarray, disc: DiscoverConfig, seed: int) -> ClusterResult:
        found = clusterer(x, disc, seed)
        labels, iters = refine_clusters(u, found.labels, found.n_clusters, found.has_noise_label, seed,
                                        fit_points=disc.fit_subsample)
        say(f"refined the {found.n_clusters} clusters in the {u.shape[1]} directions of the nuisance latent "
            f"({iters} iterations of LDA and KMeans)")
        params, n = {**found.params, "refine_iterations": iters}, found.n_clusters
        if recount and "n_clusters_chosen_by" in found.params and not found.has_noise_label:
            labels, n, counts = recount_clusters(u, labels, n, seed, disc.max_clusters, disc.fit_subsample)
            params.update(n_clusters_on_component=found.n_clusters, n_clusters=n, modes_on_discriminant=counts)
            say(f"counted the classes again as the modes on the refined clusters' first discriminant: {n}"
                + (f" (not {found.n_clusters}; modes per round {counts})" if n != found.n_clusters else " (unchanged)"))
        return replace(found, labels=labels, n_clusters=n, method=f"{found.method} (LDA-refined)", params=params)
    return run


def subspaces_table(ids: np.ndarray, s: np.ndarray) -> pa.Table:
    """`id` plus subspace_0 .. subspace_{k-1}, each a fixed-size list of d float32 (every training image)."""
    n, k, d = s.shape
    cols = {"id": ids}
    for i in range(k):
        cols[f"subspace_{i}"] = pa.FixedSizeListArray.from_arrays(pa.array(s[:, i].astype(np.float32).reshape(-1)), d)
    return pa.table(cols)


def discover(s: np.ndarray, rows: np.ndarray, ids: np.ndarray, principal_name: str, principal: np.ndarray,
             factors: dict[str, np.ndarray], cfg: Config, out: Path, title: str = "",
             say: Callable[[str], None] = print, labelled: np.ndarray | None = None,
             clusterer: Clusterer = cluster) -> DiscoverResult:
    """Stage 2 on the stage-1 embeddings s (N, k, d) of the training rows: score the subspaces, choose
    discover.n_auxiliary of them by discover.criterion and cluster each into an auxiliary task (or, with
    discover.space=ica, cluster from every independent component of the nuisance latent and keep the classes that
    stand apart most as levels: `component_starts`, `choose_starts`), and write
    labels.parquet, embeddings.parquet (the first chosen subspace or component), subspaces.parquet, the scorecard
    (scorecard.png) and diagnostics.json into `out`. Returns what it found.

    `labelled` (N,) bool marks the rows whose principal label is known (data.labelled_frac): every row is clustered
    and labelled; the scores, diagnostics and scorecard that need the principal read the labelled rows only (the
    labels' match with the known factors reads every row), and labels.parquet gives the others principal = -1. `clusterer`: see `cluster_and_diagnose`."""
    d, disc = cfg.disentangle, cfg.discover
    lab = slice(None) if labelled is None else np.asarray(labelled, bool)  # a slice: no copies when all are labelled
    pl, fl = principal[lab], {f: v[lab] for f, v in factors.items()}
    scores = subspace_scores(s[lab], pl, d.principal_subspace, d.margin, d.oracle_prob, cfg.seed, n_clusters=disc.n_clusters,
                             max_clusters=disc.max_clusters, clusters=disc.space == "subspace")
    columns = {"row": rows, "id": ids, "principal": principal if labelled is None else np.where(lab, principal, -1)}
    tasks, comp_scores = [], None
    if disc.space == "ica":
        u, loadings = nuisance_components(s, d.principal_subspace, disc, cfg.seed)
        say(f"nuisance latent: {u.shape[1]} independent components; each one the start of the clusterer, refined in "
            "all of them")
        starts = component_starts(u, pl, lab, disc, cfg.seed, clusterer, say)
        chosen = choose_starts(starts, disc.n_auxiliary)
        from scipy.stats import kurtosis

        comp_scores = {"kurtosis": kurtosis(u, axis=0).round(4).tolist(), "classes": [0] * u.shape[1],
                       "level_separation": [0.0] * u.shape[1], "score": [0.0] * u.shape[1]}  # 0 classes: no start
        for st in starts:
            comp_scores["classes"][st.component] = st.result.n_clusters
            comp_scores["level_separation"][st.component] = round(st.levels, 4)
            comp_scores["score"][st.component] = round(st.score, 4)
        for task, st in zip(auxiliary_tasks(disc.n_auxiliary), chosen):
            c, result = st.component, st.result
            j = int(np.argmax(loadings[c]))
            say(f"{task}: independent component {c} (loads on subspace {j} {loadings[c][j]:.0%}): {result.method}, "
                f"{result.n_clusters} classes{' + noise' if result.has_noise_label else ''} (score {st.score:.3f})")
            columns[task] = result.labels
            tasks.append(AuxiliaryTask(task, j, result.method, result.params, result.has_noise_label,
                                       diagnostics(result.labels, principal, factors, labelled), c,
                                       loadings[c].round(4).tolist()))
        points = [u[:, c.component : c.component + 1] for c in chosen]
    else:
        chosen = rank_subspaces(scores, disc.criterion, d.principal_subspace, disc.dead_subspace_frac, disc.n_auxiliary)
        points = [s[:, j] for j in chosen]
        for task, x, j in zip(auxiliary_tasks(disc.n_auxiliary), points, chosen):
            result, diag = cluster_and_diagnose(x, disc, cfg.seed, principal, factors,
                                                f"{task}: subspace {j} (criterion {disc.criterion})", say, labelled, clusterer)
            columns[task] = result.labels
            tasks.append(AuxiliaryTask(task, j, result.method, result.params, result.has_noise_label, diag))
    write_with(out / "labels.parquet", lambda p: pq.write_table(pa.table(columns), p))
    emb = points[0].astype(np.float32)
    table = pa.table({"row": rows, "embedding": pa.FixedSizeListArray.from_arrays(emb.reshape(-1), emb.shape[1])})
    write_with(out / "embeddings.parquet", lambda p: pq.write_table(table, p))
    write_with(out / "subspaces.parquet", lambda p: pq.write_table(subspaces_table(ids, s), p))
    card = scorecard(s[lab], principal_name, pl, fl, d.principal_subspace, cfg.seed)
    write_with(out / "scorecard.png", lambda p: heatmap(card, p, title=title))
    sep = card.principal_separation()
    say(f"scorecard: principal '{principal_name}' in alpha {sep['in_alpha']:.3f}, best elsewhere {sep['best_other']:.3f}; "
        + ", ".join(f"subspace {j} holds {card.best_factor(j)[0]} ({card.best_factor(j)[1]:.2f})" for j in (t.subspace for t in tasks)))
    margin = (criterion_margin(scores, disc.criterion, d.principal_subspace, disc.dead_subspace_frac)
              if disc.space == "subspace" else None)
    if margin is not None:
        say(f"subspace {chosen[0]} leads the runner-up by {margin:.2f}x on criterion {disc.criterion}")
    dead = dead_subspaces(scores["variance"], d.principal_subspace, disc.dead_subspace_frac)
    if nuisance_subspaces(scores["variance"], d.principal_subspace, disc.dead_subspace_frac)[1]:
        var = np.asarray(scores["variance"])
        say(f"every subspace other than the principal one is below discover.dead_subspace_frac = {disc.dead_subspace_frac}"
            f" x the largest variance (" + ", ".join(f"{j}: {var[j] / var.max():.1e}" for j in dead) + "), so discovery "
            "used them all (the whole non-alpha latent). The nuisance latent is small: check the scorecard's 'all' row "
            "for what the autoencoder encodes, and train longer if it is near 0")
    elif dead:
        say(f"not considered: subspace(s) {', '.join(map(str, dead))}, variance below discover.dead_subspace_frac = "
            f"{disc.dead_subspace_frac} x the largest" + (" (one candidate left)" if s.shape[1] - 1 - len(dead) == 1 else ""))
    info = DiscoverResult(disc.criterion, {k: v.tolist() for k, v in scores.items()}, tasks, card.to_dict(), "scorecard.png",
                          margin, disc.space, comp_scores,
                          score=chosen[0].score if disc.space == "ica" else _task_score(points[0], tasks[0], columns, lab, pl, cfg.seed))
    write_json(out / "diagnostics.json", info.to_dict())
    return info
