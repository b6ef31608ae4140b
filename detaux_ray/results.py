"""Typed results of the pipeline's stages (no Ray): what each stage found, what the report and tuning read.

Each result's JSON form (`to_dict`) is its stage's record in `<stage>/manifest.json` (and `diagnostics.json`,
`results.json`); `from_dict` reads it back, so a reused stage gives the same object as a fresh one. Keys that a
manifest adds (config hash, checksums, times) are ignored on the way in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _plain(obj) -> dict:
    """A result as JSON-ready dict: nested results converted, optional fields left out while they are None."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None and f.default is None:
            continue
        out[f.name] = _value(v)
    return out


def _value(v):
    if dataclasses.is_dataclass(v):
        return v.to_dict()
    if isinstance(v, dict):
        return {k: _value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_value(x) for x in v]
    return v


def _known(cls, d: dict) -> dict:
    """The keys of `d` that are fields of `cls` (a manifest carries more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


class _Result:
    """JSON both ways for a result dataclass; results holding other results read those in their own from_dict."""

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**_known(cls, d))


@dataclass
class Diagnostics(_Result):
    """Auxiliary labels against the principal task (NMI, AMI, chi-square independence test) and, where factors are
    known, against each factor (homogeneity, completeness, V-measure); `best_factor` has the largest V-measure."""

    n_aux_classes: int
    cluster_sizes: dict
    nmi_principal_aux: float
    ami_principal_aux: float
    chi2: float
    chi2_dof: int
    chi2_p_value: float
    factor_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    best_factor: str | None = None

    def best_scores(self) -> dict[str, float]:
        """The best-matching factor's homogeneity / completeness / V-measure ({} without known factors)."""
        return self.factor_scores.get(self.best_factor, {}) if self.best_factor else {}


@dataclass
class AuxiliaryTask(_Result):
    """One discovered task: the subspace it clusters, how, and its diagnostics."""

    task: str
    subspace: int
    clusterer: str
    clusterer_params: dict
    has_noise_label: bool
    diagnostics: Diagnostics
    # discover.space=ica: the independent component clustered (subspace: the one it loads on most) and its loadings,
    # the share of its variance in each subspace
    component: int | None = None
    loadings: list[float] | None = None

    @classmethod
    def from_dict(cls, d: dict) -> AuxiliaryTask:
        return cls(**(_known(cls, d) | {"diagnostics": Diagnostics.from_dict(d["diagnostics"])}))


@dataclass
class DisentangleResult(_Result):
    """Stage 1: the trained product-manifold autoencoder (`model`, a file in the stage folder) and its last losses."""

    model: str
    epochs: int
    steps: int
    metrics: dict[str, float]
    architecture: dict[str, Any]
    nodes: int = 1  # on how many Ray nodes the worker group trained
    restarts: int = 0  # how often Ray Train restarted the worker group from its newest checkpoint (a lost worker)


@dataclass
class DiscoverResult(_Result):
    """Stage 2: the subspace criteria's scores, the auxiliary tasks (the first is the paper's single task) and the
    stage-1 scorecard (a `scorecard.Scorecard` as dict)."""

    criterion: str
    subspace_scores: dict[str, list[float]]
    auxiliary_tasks: list[AuxiliaryTask]
    scorecard: dict | None = None
    scorecard_png: str | None = None
    criterion_margin: float | None = None  # the chosen subspace's score / the runner-up's (largest-wins criteria)
    space: str = "subspace"  # what was clustered: a subspace (the paper) or independent components (ica)
    component_scores: dict[str, list[float]] | None = None  # space=ica: per component, kurtosis and calinski
    score: float | None = None  # the first task's classes' `auxiliary.start_score`: the best restart's is the largest

    @property
    def first(self) -> AuxiliaryTask:
        return self.auxiliary_tasks[0]

    def to_dict(self) -> dict:
        t = self.first  # the first task's fields also at the top level: what readers of diagnostics.json look up
        return {"chosen_subspace": t.subspace, "criterion": self.criterion, "clusterer": t.clusterer,
                "clusterer_params": t.clusterer_params, "has_noise_label": t.has_noise_label} | _plain(self) | {
                "diagnostics": t.diagnostics.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> DiscoverResult:
        return cls(**(_known(cls, d) | {"auxiliary_tasks": [AuxiliaryTask.from_dict(t) for t in d["auxiliary_tasks"]]}))


@dataclass
class FitResult(_Result):
    """One trained stage-3 model: its principal accuracy on the held-out (and validation) split, size and time."""

    model: str  # stl, hps, nddr, mti, maxl, auxilearn
    test_principal_accuracy: float
    epochs: int
    parameters: int
    backbone: str
    loss_weighting: str
    tasks: list[str]
    wall_time_s: float
    val_principal_accuracy: float | None = None
    auxiliary_classes: int | None = None  # maxl / auxilearn: the generator's classes
    auxiliary_split_images: int | None = None  # auxilearn: images held out for the generator
    labels: str | None = None  # where the auxiliary labels came from, when not stage 2 (the ablation)
    aux_gradient: str = "sum"  # hps: how the auxiliary gradient joined the principal one (mtl.aux_gradient)
    nodes: int = 1  # on how many Ray nodes the worker group trained
    restarts: int = 0  # how often Ray Train restarted the worker group from its newest checkpoint (a lost worker)


def control_keys(kinds: dict[str, str]) -> dict[str, str]:
    """{result key: its control's key} for the multi-task architectures whose principal-only version is not STL.

    kinds: result key -> model kind (e.g. {"stl": "stl", "mtl": "nddr", "mti": "mti"}). NDDR-CNN and MTI-Net trained
    on the principal task alone ("nddr_alone", "mti_alone") tell the auxiliary task's effect from the architecture's;
    plain HPS on the principal alone is STL, and the label-learning peers (maxl, auxilearn) are measured against STL.
    """
    return {key: f"{kind}_alone" for key, kind in kinds.items() if kind in ("nddr", "mti")}


@dataclass
class SeedStatistics(_Result):
    """Per-model principal accuracies over seeds, mean / sample std, and Welch's t-test against STL
    (`models[key]`: mean, std and, for key != stl, t_statistic and p_value; a model with a control (mtl.controls)
    also has control (its key), t_vs_control and p_vs_control)."""

    seeds: list[int]
    model: str  # mtl.model: the row reported as "mtl"
    accuracy: dict[str, list[float]]
    models: dict[str, dict[str, float | str]] = field(default_factory=dict)

    @property
    def p_value(self) -> float | None:
        return self.models.get("mtl", {}).get("p_value")

    def to_dict(self) -> dict:
        out = _plain(self)
        for key, row in self.models.items():  # flat keys as well, for a quick look in results.json
            out[f"{key}_mean"], out[f"{key}_std"] = row["mean"], row["std"]
        if "p_value" in self.models.get("mtl", {}):
            out["t_statistic"], out["p_value"] = self.models["mtl"]["t_statistic"], self.models["mtl"]["p_value"]
        return out


@dataclass
class Ablation(_Result):
    """Paper Sec. 5.3: a plain autoencoder's latent clustered, and mtl.model trained on those labels."""

    result: FitResult
    diagnostics: Diagnostics
    clusterer: str
    ae_steps: int

    @classmethod
    def from_dict(cls, d: dict) -> Ablation:
        return cls(result=FitResult.from_dict(d["result"]), diagnostics=Diagnostics.from_dict(d["diagnostics"]),
                   clusterer=d["clusterer"], ae_steps=d["ae_steps"])


@dataclass
class MTLResult(_Result):
    """Stage 3: every trained model by report key ("stl", "mtl" = mtl.model, the compared ones, "entangled"), each
    task's classes, the over-seed statistics and the ablation."""

    results: dict[str, FitResult]
    n_classes: dict[str, int]
    seeds: SeedStatistics | None = None
    entangled_ablation: Ablation | None = None

    @classmethod
    def from_dict(cls, d: dict) -> MTLResult:
        return cls(results={k: FitResult.from_dict(v) for k, v in d["results"].items()}, n_classes=d["n_classes"],
                   seeds=SeedStatistics.from_dict(d["seeds"]) if d.get("seeds") else None,
                   entangled_ablation=Ablation.from_dict(d["entangled_ablation"]) if d.get("entangled_ablation") else None)


@dataclass
class StageRun(_Result):
    """How a stage went in this run: its time and whether it was reused from an earlier run."""

    wall_time_s: float
    reused: bool
    hash: str


# What each stage's manifest holds, by stage name (the stage runner reads a reused stage back with it).
STAGE_RESULTS = {"disentangle": DisentangleResult, "discover": DiscoverResult, "mtl": MTLResult}


@dataclass
class DatasetInfo(_Result):
    """The run's data: the principal task and the split sizes."""

    name: str
    principal: str
    n_principal_classes: int
    n_train: int
    n_val: int
    n_test: int
    image_size: int
    n_labelled: int | None = None  # training images with their principal label (data.labelled_frac); None: all


@dataclass
class Report(_Result):
    """A whole run: the three stages' results, the data, how each stage went and the resolved config.
    `to_dict` is report.json."""

    dataset: DatasetInfo
    disentangle: DisentangleResult
    discover: DiscoverResult
    mtl: MTLResult
    stages: dict[str, StageRun]
    config: dict
    scorecard_png: str = "discover/scorecard.png"
    traversal_png: str | None = None  # the latent-traversal grid beside report.md, rows labelled by subspace
    # Stage 1 trained again with the remedy formulation after discovery found a constant latent (Pipeline.fall_back):
    # {"reason", "overrides", "first_stage_1"}; None when the first stage 1 was used.
    fallback: dict | None = None
    # disentangle.restarts > 1: per restart {"restart", "seed", "kept", "folder", and "score", "n_classes",
    # "nmi_principal_aux", "principal_in_alpha", "principal_best_other" or, for a constant latent, "stopped"}
    restarts: list[dict] | None = None

    @property
    def stl(self) -> FitResult | None:
        return self.mtl.results.get("stl")

    @property
    def multitask(self) -> FitResult:
        """The run's multi-task model (mtl.model on the discovered labels)."""
        return self.mtl.results["mtl"]

    @property
    def diagnostics(self) -> Diagnostics:
        return self.discover.first.diagnostics

    def to_dict(self) -> dict:
        diag, disc, mtl = self.diagnostics, self.discover, self.mtl
        abl = mtl.entangled_ablation
        return {
            "stl_accuracy": self.stl.test_principal_accuracy if self.stl else None,
            "mtl_accuracy": self.multitask.test_principal_accuracy,
            "mtl_model": self.multitask.model,
            "models": _value(mtl.results),
            "nmi_principal_aux": diag.nmi_principal_aux,
            "ami_principal_aux": diag.ami_principal_aux,
            "chi2_p_value": diag.chi2_p_value,
            "n_aux_classes": diag.n_aux_classes,
            "cluster_sizes": diag.cluster_sizes,
            "factor_scores": diag.factor_scores,
            "best_factor": diag.best_factor,
            "scorecard": disc.scorecard,
            "chosen_subspace": disc.first.subspace,
            "subspace_criterion": disc.criterion,
            "criterion_margin": disc.criterion_margin,
            "subspace_scores": disc.subspace_scores,
            "clusterer": disc.first.clusterer,
            "clusterer_params": disc.first.clusterer_params,
            "disentangle_final_losses": self.disentangle.metrics,
            "auxiliary_tasks": [{k: v for k, v in t.to_dict().items() if k != "diagnostics"} | {
                "n_classes": t.diagnostics.n_aux_classes, "nmi_principal_aux": t.diagnostics.nmi_principal_aux,
                "best_factor": t.diagnostics.best_factor} for t in disc.auxiliary_tasks],
            "seeds": mtl.seeds.to_dict() if mtl.seeds else None,
            "entangled_ablation": {k: v for k, v in abl.to_dict().items() if k != "result"} if abl else None,
            "dataset": self.dataset.to_dict(),
            "stages": _value(self.stages),
            "config": self.config,
            "scorecard_png": self.scorecard_png,
            "traversal_png": self.traversal_png,
            "fallback": self.fallback,
            "restarts": self.restarts,
        }
