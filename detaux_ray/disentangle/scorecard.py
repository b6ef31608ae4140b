"""The stage-1 scorecard (no Ray): how much of each known factor every subspace holds.

For subspace i and factor f, a k-nearest-neighbour probe is fitted on a seeded subsample of s_i and scored on a
disjoint one:

    score[i, f] = (acc - majority) / (1 - majority)

acc is the probe's accuracy, majority the accuracy of always answering the most frequent value (from the fitting
half). 0 = chance, 1 = perfect; it is free of the subspace's scale (kNN only compares distances) and of the
factor's number of values. The row "all" probes the whole latent (every live subspace, each scaled to unit spread,
concatenated): a factor that is ~0 there is not encoded anywhere.

Known factors: the principal labels always, the dataset's ground-truth factors (shapes / shapes3d factors,
FACES' age / gender, imagefolder `extra_csv` columns). An integer or text column with about one value per image
(an id) is not a factor; a numeric column with many values (a measurement) is cut into deciles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_CATEGORIES = 50  # a numeric column with more distinct values than this is binned into deciles
ID_FRACTION = 0.5  # a column with more distinct values than this fraction of the images is an id, not a factor


@dataclass
class Scorecard:
    factors: list[str]  # column names; the principal factor first
    rows: list[str]  # "0" .. "k-1", then "all"
    scores: np.ndarray  # (len(rows), len(factors))
    principal: str
    alpha: int
    n_fit: int
    n_eval: int
    skipped: dict[str, str] = field(default_factory=dict)  # column -> why it is not a factor

    def score(self, subspace: int | str, factor: str) -> float:
        return float(self.scores[self.rows.index(str(subspace)), self.factors.index(factor)])

    @property
    def k(self) -> int:
        return len(self.rows) - 1

    def best_factor(self, subspace: int) -> tuple[str, float]:
        """The factor subspace j holds best (the principal included)."""
        row = self.scores[subspace]
        j = int(np.argmax(row))
        return self.factors[j], float(row[j])

    def principal_separation(self) -> dict:
        """Principal score in alpha, the largest elsewhere, and their ratio (the stage-1 targets)."""
        col = self.scores[: self.k, self.factors.index(self.principal)]
        others = np.delete(col, self.alpha)
        best_other = float(others.max()) if len(others) else 0.0
        in_alpha = float(col[self.alpha])
        return {"in_alpha": in_alpha, "best_other": best_other,
                "ratio": in_alpha / best_other if best_other > 1e-9 else float("inf")}

    def to_dict(self) -> dict:
        return {"factors": self.factors, "rows": self.rows, "scores": np.round(self.scores, 4).tolist(),
                "principal": self.principal, "alpha": self.alpha, "n_fit": self.n_fit, "n_eval": self.n_eval,
                "skipped": self.skipped, "principal_separation": self.principal_separation()}

    @classmethod
    def from_dict(cls, d: dict) -> "Scorecard":
        return cls(d["factors"], d["rows"], np.asarray(d["scores"], dtype=float), d["principal"], d["alpha"],
                   d["n_fit"], d["n_eval"], d.get("skipped", {}))

    def markdown(self) -> list[str]:
        head = "| subspace | " + " | ".join(f + (" (principal)" if f == self.principal else "") for f in self.factors) + " |"
        lines = [head, "|---" * (len(self.factors) + 1) + "|"]
        for r, row in zip(self.rows, self.scores):
            name = f"{r} = alpha" if r == str(self.alpha) else ("all (whole latent)" if r == "all" else r)
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
        return lines


def factor_columns(principal_name: str, principal: np.ndarray, factors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The columns the scorecard probes (principal first) as integer codes, and the skipped ones with the reason."""
    out = {principal_name: _codes(principal)}
    skipped = {}
    n = len(principal)
    for name, values in factors.items():
        if name == principal_name:
            continue
        values = np.asarray(values)
        if len(values) != n:
            skipped[name] = f"{len(values)} values for {n} images"
            continue
        uniq = np.unique(values[~_missing(values)]) if values.dtype.kind in "fc" else np.unique(values.astype(str))
        if len(uniq) < 2:
            skipped[name] = "a single value"
        elif is_identifier(values):
            skipped[name] = f"{len(uniq)} distinct values in {n} images: an identifier, not a factor"
        elif values.dtype.kind in "iuf" and len(uniq) > MAX_CATEGORIES:  # a measurement: deciles
            edges = np.nanquantile(values.astype(float), np.linspace(0, 1, 11)[1:-1])
            out[name] = np.searchsorted(edges, values.astype(float), side="right").astype(np.int64)
        else:
            out[name] = _codes(values)
    return out, skipped


def is_identifier(values: np.ndarray) -> bool:
    """An integer or text column with about one value per image (a file name, an id): never a factor."""
    values = np.asarray(values)
    if values.dtype.kind in "fc":
        return False
    n_unique = len(np.unique(values.astype(str)))
    return n_unique > ID_FRACTION * len(values) and n_unique > MAX_CATEGORIES


def _missing(values: np.ndarray) -> np.ndarray:
    return np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), dtype=bool)


def _codes(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind not in "iub":
        values = values.astype(str)
    return np.unique(values, return_inverse=True)[1].astype(np.int64).ravel()


def probe_scores(x_fit: np.ndarray, x_eval: np.ndarray, ys_fit: list[np.ndarray], ys_eval: list[np.ndarray],
                 n_neighbors: int = 15) -> list[float]:
    """(acc - majority) / (1 - majority) of a kNN probe on x for each label column; 0 when x carries no spread at
    all (a dead subspace). The neighbours depend on x alone, so they are found once and vote for every column
    (a plain majority of the n_neighbors nearest, ties to the smallest label: what KNeighborsClassifier predicts)."""
    from sklearn.neighbors import NearestNeighbors

    spread = float(x_fit.std(0).max()) if len(x_fit) else 0.0
    if not np.isfinite(spread) or spread <= 1e-12 * max(1.0, float(np.abs(x_fit).max())):
        return [0.0] * len(ys_fit)
    nn = NearestNeighbors(n_neighbors=min(n_neighbors, len(x_fit)), algorithm="brute").fit(x_fit / spread)
    idx = nn.kneighbors(x_eval / spread, return_distance=False)
    rows = np.arange(len(x_eval))[:, None]
    out = []
    for y_fit, y_eval in zip(ys_fit, ys_eval):
        values, codes, counts = np.unique(y_fit, return_inverse=True, return_counts=True)
        majority = float(np.mean(y_eval == values[np.argmax(counts)]))
        if majority >= 1.0:
            out.append(0.0)
            continue
        votes = np.bincount((rows * len(values) + codes.ravel()[idx]).ravel(),
                            minlength=len(x_eval) * len(values)).reshape(len(x_eval), len(values))
        acc = float(np.mean(values[votes.argmax(1)] == y_eval))
        out.append(max(-1.0, (acc - majority) / (1.0 - majority)))
    return out


def scorecard(s: np.ndarray, principal_name: str, principal: np.ndarray, factors: dict[str, np.ndarray] | None,
              alpha: int, seed: int = 0, n_fit: int = 3000, n_eval: int = 2000, n_neighbors: int = 15) -> Scorecard:
    """The (k + 1) x F probe scores of embeddings s (N, k, d) against the principal labels and known factors."""
    s = np.asarray(s, dtype=np.float32)
    n, k, _ = s.shape
    columns, skipped = factor_columns(principal_name, np.asarray(principal), factors or {})
    n_fit = min(n_fit, n // 2)
    n_eval = min(n_eval, n - n_fit)
    if n_fit < 2 or n_eval < 1:
        raise ValueError(f"the scorecard needs at least 3 images, got {n}")
    perm = np.random.default_rng([seed, 11]).permutation(n)
    fit, ev = perm[:n_fit], perm[n_fit:n_fit + n_eval]
    # "all": every live subspace scaled to unit total spread, concatenated, so no subspace dominates by its scale.
    spread = np.sqrt(((s - s.mean(0)) ** 2).sum(-1).mean(0))
    live = spread > 1e-9 * max(1.0, float(spread.max()))
    whole = (s[:, live] / spread[live][None, :, None]).reshape(n, -1) if live.any() else s.reshape(n, -1)
    views = [s[:, i] for i in range(k)] + [whole]
    scores = np.zeros((k + 1, len(columns)))
    ys_fit, ys_ev = [y[fit] for y in columns.values()], [y[ev] for y in columns.values()]
    for r, x in enumerate(views):
        scores[r] = probe_scores(x[fit], x[ev], ys_fit, ys_ev, n_neighbors)
    return Scorecard(list(columns), [str(i) for i in range(k)] + ["all"], scores, principal_name, alpha,
                     len(fit), len(ev), skipped)


def heatmap(card: Scorecard, path=None, title: str = ""):
    """The scorecard as a heatmap figure (subspaces x factors); saved as PNG when `path` is given.

    Returns the matplotlib figure (TensorBoard's add_figure takes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.1 * len(card.factors) + 2.0, 0.45 * len(card.rows) + 1.6))
    im = ax.imshow(np.clip(card.scores, 0, 1), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(card.factors)), [f + ("\n(principal)" if f == card.principal else "") for f in card.factors],
                  rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(card.rows)), [f"{r} (alpha)" if r == str(card.alpha) else r for r in card.rows], fontsize=8)
    for i in range(card.scores.shape[0]):
        for j in range(card.scores.shape[1]):
            v = card.scores[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_ylabel("subspace")
    ax.set_title(title or "probe score per subspace (0 = chance, 1 = perfect)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
