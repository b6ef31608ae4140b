"""Typed run configuration: dataclasses, YAML presets in `detaux_ray/presets/`, `--set section.key=value` overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .errors import ConfigError

CRITERIA = ("l_dist", "dot", "cluster", "calinski")  # stage-2 subspace criteria (detaux_ray.discover.auxiliary)
CONFIG_DIR = Path(__file__).resolve().parent / "presets"  # package data, so a plain `pip install .` has them


@dataclass
class DataConfig:
    dataset: str = "shapes"
    principal: str = "scale"  # the factor (or label column) that is the principal task
    image_size: int = 32
    n_images: int = 16000  # a seeded subset of the 480,000 shapes combinations; 0 = all
    noise: float = 0.15  # salt-and-pepper fraction of pixels (paper: 15%)
    heldout_hues: list[int] = field(default_factory=lambda: [1, 3, 5, 7, 9])  # test = floor AND wall hue in these
    val_frac: float = 0.0  # seeded fraction of the training split held out as validation (tuning's objective)
    # Seeded fraction of the training split that keeps its principal label; the rest are unlabelled images, which
    # discovery labels and the multi-task models learn the auxiliary task from (docs/method.md, "Few labels").
    labelled_frac: float = 1.0
    path: str = ""  # where a real dataset's files are: a local path or a storage URI (s3://, gs://)
    resize: str = "none"  # real datasets whose images are not image_size square: none (error) | resize | center_crop
    test_frac: float = 0.2  # seeded test fraction for datasets without a split of their own (imagefolder, parquet)
    image_column: str = "image"  # parquet: encoded bytes, {bytes: ...} structs or uint8 arrays
    label_column: str = "label"  # parquet: the principal labels
    split_column: str = ""  # parquet: optional column whose value "test" marks the test split
    extra_csv: str = ""  # imagefolder: optional CSV (column `file` + more) of per-image ground-truth factors
    cache: str = "auto"  # memory (all images in the object store) | stream (read per batch) | auto (memory if < 1 GiB)


@dataclass
class DisentangleConfig:
    arch: str = "conv"  # conv (paper's small AE, 16-64 px) | resnet18 (feature-map bottleneck, sizes 64, 96, 128, ...)
    k: int = 10  # number of subspaces
    latent_dim: int = 10  # d, the ambient size of every subspace
    principal_subspace: int = 0  # alpha
    epochs: int = 40
    # Stage 1 trained this many times (each with its own seed: Config.stage1_seed), discovery on each, and the run
    # kept whose discovered classes score highest (auxiliary.start_score; no hidden factor read). Stage 1's outcome
    # varies most from seed to seed; simulated on the suite's runs (docs/studies/2026-12-07-stage1-budget.md), the
    # labels' mean min(H, C) over 1 / 2 / 3 restarts: shapes 0.90 / 0.96 / 0.97, colour_digits 0.70 / 0.84 / 0.91,
    # sprites 0.36 / 0.44 / 0.48. Each restart costs one stage 1 and one discovery.
    restarts: int = 3
    restart: int = 0  # which restart this is (set by the pipeline; 0 trains with `seed` itself)
    pairs_per_epoch: int = 0  # 0 = one pair per training image
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 1e-2
    oracle_prob: float = 0.5  # probability that a pair's principal labels differ
    oracle_temperature: float = 0.01
    variant: str = "detaux"  # detaux (the knobs below) | paper (w_principal=0, w_adversary=0, pulls=all, absolute distances)
    w_principal: float = 0.01  # cross-entropy of a linear principal classifier on s_alpha (0 = the paper: oracle only)
    w_adversary: float = 0.1  # confusion loss against principal classifiers on the other subspaces (0 = off; ours)
    # The adversary must be able to read what it is to remove: one hidden layer, 10x the encoder's rate. Measured
    # over 6 seeds (docs/studies/2026-11-28-stage1-study.md): the principal separated (>= 0.8 in alpha, >= 3x elsewhere) at 6, against
    # 3 with a linear adversary at the encoder's rate (adversary_hidden=0, adversary_lr_scale=1).
    # L_dep (ours, off by default: the constant-latent remedy): the unbiased kernel dependence of the other subspaces
    # on the principal label, which a confused adversary leaves (losses.label_dependence)
    w_dependence: float = 0.0
    adversary_hidden: int = 32  # hidden units of each adversary classifier (0 = linear)
    adversary_lr_scale: float = 10.0  # the adversary's learning rate over disentangle.lr (disentangle.optimizer)
    # private (ours: s_alpha from an encoder of its own, so the principal terms never move the features the nuisance
    # subspaces read) | shared (the paper: one encoder for every subspace; variant=paper uses it). Over six seeds on
    # shapes the principal reached alpha at 0.998-1.000 and <= 0.05 elsewhere (shared: 0.79-0.98 / <= 0.20), for ~30%
    # more stage-1 time (docs/studies/2026-11-28-stage1-study.md).
    alpha_encoder: str = "private"
    pulls: str = "principal"  # which pairs L_dist pulls where: all (paper) | same | principal | alpha (losses.pull_weights)
    relative_distances: bool = True  # L_dist on distances / the subspace's batch spread (scale-free; paper: false)
    pair_mode: str = "oracle_prob"  # oracle_prob (the paper: labels differ with oracle_prob) | random (the authors' code)
    margin: float = 0.2  # m in L_dist (relative_distances: in units of the subspace's typical pair distance)
    warmup_frac: float = 0.25  # first fraction of epochs: L_rec only
    beta_rise: float = 25.0  # beta = min(exp(rise/E * (e - center*E)), 1)
    beta1_center: float = 0.4
    beta2_center: float = 0.5
    w_dist: float = 0.1
    w_spar: float = 0.1
    w_cons: float = 100.0
    w_reg: float = 1e-2  # the authors' 1e-4 x their 1e2 inside L_reg
    # The earlier remedy for a nuisance latent that the confusion term collapses to a constant (`digits`; now
    # w_dependence, docs/method.md): the encoder confuses the adversary only after the warm-up, and L_floor keeps
    # every other subspace at least spread_floor x alpha's width from then on (0 = off; losses.spread_floor_loss).
    # Off: on shapes and colour_digits they cost the reconstruction and the labels
    # (docs/studies/2026-12-05-nuisance-collapse.md).
    confusion_after_warmup: bool = False
    spread_floor: float = 0.0
    cons_swaps: int = 1  # swapped subspaces per pair for L_cons (k = exact sum; fewer = unbiased sample)
    cons_fraction: float = 1.0  # share of each batch's pairs swapped for L_cons (an unbiased sample; cheaper steps)
    log_images_every: int = 5  # epochs between reconstruction / traversal grids in TensorBoard
    scorecard_every: int = 5  # epochs between scorecards (probe of every subspace x factor) in TensorBoard; 0 = never
    scorecard_images: int = 3000  # training images the TensorBoard scorecard embeds

    def formulation(self) -> tuple[float, str, bool]:
        """(w_principal, pulls, relative_distances) in force: the paper's values under variant=paper."""
        if self.variant == "paper":
            return 0.0, "all", False
        return self.w_principal, self.pulls, self.relative_distances


@dataclass
class DiscoverConfig:
    # calinski (scale-free: between / within sum of squares of KMeans clusters; docs/studies/2026-11-28-stage1-study.md) | cluster
    # (scale-free: their silhouette) | l_dist (paper) | dot (authors' code)
    criterion: str = "calinski"
    # What is clustered: ica (ours: the independent components of the live non-alpha subspaces together, each one a
    # start, the classes that stand apart most as levels kept; discover.auxiliary.component_starts) | subspace (the paper: the chosen subspace). The
    # nuisance latent had few directions, each subspace a mixture of them: with the private alpha encoder the labels'
    # mean min(H, C) over six shapes seeds 0.83 against 0.51 (docs/studies/2026-11-28-stage1-study.md).
    space: str = "ica"
    ica_var_cut: float = 1e-3  # space=ica: PCA directions holding more than this share of the nuisance variance are unmixed
    clusterer: str = "hdbscan"  # hdbscan | kmeans | kmeans++ | meanshift
    backend: str = "auto"  # auto | cpu | cuml  (hdbscan only)
    min_cluster_frac: float = 0.02  # min_cluster_size as a fraction of N
    min_samples: int = 10
    # kmeans / kmeans++: 0 = chosen from the data (a Gaussian mixture's BIC over [2, max_clusters] on the component,
    # then, space=ica, the modes on the refined classes' discriminant: discover.auxiliary.recount_clusters)
    n_clusters: int = 0
    max_clusters: int = 20  # n_clusters = 0: the largest number of auxiliary classes considered
    meanshift_quantile: float = 0.1
    fit_subsample: int = 50000  # cluster a seeded subsample this large, label the rest by prediction
    predict: str = "knn"  # how the rest is labelled (CPU and cuML): "knn" (KD-tree vote) or "approximate" (hdbscan's)
    knn_k: int = 10
    dead_subspace_frac: float = 0.01  # subspaces with variance below this fraction of the largest are skipped
    n_auxiliary: int = 1  # auxiliary tasks: one per best subspace (the paper uses 1; more is its future work)


@dataclass
class MTLConfig:
    model: str = "hps"  # multi-task model compared with STL: hps | nddr | mti
    # More models, reported beside it: hps | nddr | mti on the same discovered labels, and the peers that learn
    # their own auxiliary labels instead (Table 1): maxl (Liu et al. 2019), auxilearn (Navon et al. 2021).
    compare: list[str] = field(default_factory=list)
    backbone: str = "conv"  # conv (small VGG-style, 16-64 px) | resnet18 (torchvision, random init)
    pretrained: str = ""  # resnet18 only: a local state_dict file to start from (nothing is downloaded)
    baseline: bool = True  # also train the STL baseline (tuning trials skip it: their objective is the MTL model)
    seeds: int = 1  # > 1: repeat STL, `model` and `compare` over this many seeds; mean, std, Welch t-test vs STL
    entangled_ablation: bool = False  # also cluster a plain (L_rec only) autoencoder's latent and train `model` on it
    # Also train every architecture in `model` / `compare` that is not plain HPS (nddr, mti) on the principal task
    # alone: the control that tells the discovered task's effect from the architecture's (HPS's control is STL).
    # Measured on shapes: NDDR / MTI beat STL by ~0.6 points with or without the auxiliary task (bench/README.md).
    controls: bool = False
    epochs: int = 150
    test_every: int = 1  # epochs between held-out test accuracies (TensorBoard, progress); the last epoch always
    batch_size: int = 32
    # sgd (Nesterov `momentum`) at 0.03 with a cosine schedule: the best mean validation accuracy of STL and MTL-HPS
    # over SGD at 0.02-0.1 and AdamW at 1e-3-3e-3 (docs/studies/2026-11-30-stage3-study.md); adamw | sgd.
    optimizer: str = "sgd"
    momentum: float = 0.9  # sgd only
    lr: float = 0.03
    lr_schedule: str = "cosine"  # cosine (annealed to 0 over the epochs, per epoch: mtl.learning_rate) | constant
    weight_decay: float = 1e-4
    width: int = 32  # channels of the first backbone stage
    loss_weighting: str = "fixed"  # fixed (the weights below) | uncertainty (Kendall et al., learned)
    # hps: how the auxiliary gradient joins the principal one at the shared features (mtl.combine_task_gradients):
    # sum (plain MTL, the paper) | reverse (gradient reversal: the features learn to hide the discovered factor; ours)
    aux_gradient: str = "sum"
    principal_weight: float = 1.0
    # 0.1: over seeds 0-2 with the cosine schedule, weight 0.5 made HPS learn the principal ~2 epochs later (same study)
    auxiliary_weight: float = 0.1
    # maxl / auxilearn (detaux_ray/mtl/auxlearn.py): the label generator and its meta step.
    psi: int = 5  # auxiliary sub-classes per principal class (MAXL's psi; C * psi auxiliary classes)
    meta_lr: float = 1e-3  # Adam learning rate of the label generator
    meta_alpha: float = 0.1  # MAXL's virtual SGD step / the Neumann series' step size (AuxiLearn)
    meta_every: int = 5  # training steps between generator updates (AuxiLearn's code: 30; MAXL: 1)
    entropy_weight: float = 0.2  # weight of the label-collapse regulariser sum_c gbar_c log gbar_c (MAXL: 0.2)
    neumann_steps: int = 3  # terms of the Neumann series for the inverse Hessian (AuxiLearn: 3)
    aux_split: float = 0.1  # auxilearn: share of the training split held out for the generator's updates


@dataclass
class ResourcesConfig:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    data_cpus: float = 0.25  # CPUs per Ray Data map actor/task (fractional: Train workers must not starve it)
    torch_threads: int = 0  # per training worker; 0 = this node's cores / its workers (and the fits running at once)
    # Stage 1's restarts, and stage 3's fits (STL, the model, `compare`, each seed), running at once; 0 = as many as
    # the cluster holds: GPUs / num_workers, else CPUs / (num_workers * cpus_per_worker + data_cpus). Inside a
    # tuning trial: 1. On 2 cores two 4-epoch stage-1 restarts at once took 139 s, one after the other 154 s
    # (docs/studies/2026-12-07-restarts.md).
    concurrent_fits: int = 0
    amp: str = "none"  # "bf16": bfloat16 autocast in both training stages and the embedding (GPU)
    # torch.compile of stage 1's step (its loss and optimiser update), in torch's modes: "default", or
    # "reduce-overhead" (CUDA graphs too). For a GPU, where an eager step is bound by per-op launches; the first
    # steps pay the compilation (~1 min on 2 CPU cores); on a CPU the step is bound by its convolutions and gains
    # nothing measurable (bench/README.md). The paper preset, sized for GPUs, sets "default".
    compile: str = "none"
    address: str = ""  # Ray address; "" = connect to RAY_ADDRESS or start a local Ray
    storage_path: str = ""  # Ray Train checkpoints: a shared path or s3:// / gs:// URI; "" = <run-dir>/checkpoints
    max_failures: int = 2  # worker-group restarts from the last checkpoint before a training stage fails
    # Where a run's workers go: "pack" on as few nodes as hold them (DDP's all-reduce stays inside a node), "spread"
    # one per node where they fit (each worker gets a node's cores, disk and network to itself)
    placement: str = "pack"


@dataclass
class DebugConfig:
    """Fault injection for tests only; never part of a stage hash."""

    nan_epoch: int = -1  # stage 1 loss becomes NaN in this epoch
    nan_node: str = "any"  # on the ranks of any node, or only on those of "other" nodes than the driver's
    kill_at: str = ""  # "stage:epoch:step" (stage = disentangle | stl | hps): rank 0 dies there, once per run dir
    # Stage 1's workers wait this long after each epoch: a test that acts on the cluster when it reads an epoch's
    # line (delivered by `ray job submit` in chunks seconds apart) still finds the stage training
    epoch_pause_s: float = 0.0
    # Stage 1 ends with every subspace but alpha constant, unless it runs CONSTANT_LATENT_REMEDY (the fallback)
    constant_latent: bool = False


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    disentangle: DisentangleConfig = field(default_factory=DisentangleConfig)
    discover: DiscoverConfig = field(default_factory=DiscoverConfig)
    mtl: MTLConfig = field(default_factory=MTLConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def stage1_seed(self) -> int:
        """Stage 1's training seed (initialisation, pairs): `seed` for the first restart, another per later one;
        the data split always follows `seed`."""
        return self.seed + 1_000_003 * self.disentangle.restart

    def stage_hash(self, stage: str, data_fingerprint: str = "") -> str:
        """Hash of everything a stage's result depends on: its own section and every upstream one, less the keys
        that only change what is logged (NOT_IN_HASH), plus the number of training workers (each trains on its
        own batches of batch_size, so the global batch and the step count follow it) and the mixed precision;
        `data_fingerprint` (`ImageSource.fingerprint`: the dataset's files, or a generated dataset's version); and the
        code version of each stage in the chain (STAGE_VERSIONS)."""
        chain = {"disentangle": ["data", "disentangle"], "discover": ["data", "disentangle", "discover"],
                 "mtl": ["data", "disentangle", "discover", "mtl"]}[stage]
        d = self.to_dict()
        sections = {s: {k: v for k, v in d[s].items() if f"{s}.{k}" not in NOT_IN_HASH} for s in chain}
        if not sections["disentangle"]["restart"]:  # the first restart keeps the hashes of runs before restarts
            del sections["disentangle"]["restart"]
        payload = {"seed": self.seed, **sections, "num_workers": self.resources.num_workers, "amp": self.resources.amp}
        versions = {s: STAGE_VERSIONS[s] for s in chain if STAGE_VERSIONS.get(s)}
        if versions:  # absent while every version is 0: hashes written before the versions stay valid
            payload["versions"] = versions
        if data_fingerprint:
            payload["data_fingerprint"] = data_fingerprint
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# A stage's code version: raised when a change to the code gives another result for the same config, so the stage
# store computes the stage (and every later one) again instead of reusing a result of the old code. discover 1:
# the number of classes counted again on the refined clusters' discriminant (discover.auxiliary.recount_clusters).
# discover 2: the result carries its kept classes' score (DiscoverResult.score), which chooses among restarts.
STAGE_VERSIONS = {"disentangle": 0, "discover": 2, "mtl": 0}

# Keys that change what a stage logs or how it holds its images, never its result: changing one reuses the stage.
# disentangle.restarts says how many stage-1 runs there are; each run's hash carries its own disentangle.restart.
NOT_IN_HASH = frozenset({"data.cache", "disentangle.restarts", "disentangle.log_images_every", "disentangle.scorecard_every",
                         "disentangle.scorecard_images", "mtl.test_every"})

# Stage 1's formulation for a latent whose nuisance subspaces all came out constant (the pipeline retrains stage 1
# with it once; docs/studies/2026-12-06-label-dependence.md: on `digits` no run stops with it and the labels hold
# least of the digit; on the kinds where the default works it costs the labels, so it is not the default).
CONSTANT_LATENT_REMEDY = ("disentangle.w_dependence=10",)


# Options measured worse than the defaults and not the paper's, removed: the value that meant "off" is still
# accepted, so the config.yaml / best.yaml of older runs load; any other value is an error naming the study.
REMOVED = {"disentangle.w_indep": 0.0, "disentangle.indep_kernel": "rbf", "disentangle.cons_relative": False,
           "disentangle.grad_clip": 0.0, "disentangle.alpha_encoder_width": 1.0}
REMOVED_WHY = "docs/studies/2026-11-28-stage1-study.md"


def _from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{where or 'root'}' must be a mapping, got {type(values).__name__}")
    for name in [n for n in values if f"{where}.{n}" in REMOVED]:
        off = REMOVED[f"{where}.{name}"]
        if values[name] != off and str(values[name]).lower() != str(off).lower():
            raise ConfigError(f"{where}.{name} was removed (measured worse than the default: {REMOVED_WHY}); "
                              f"drop the key")
        values = {k: v for k, v in values.items() if k != name}
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join((where + '.' if where else '') + u for u in unknown)}; "
                          f"known keys in '{where or 'root'}': {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, path)
        else:
            kwargs[name] = _coerce(value, tp, path)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if tp in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            out = tp(value)
            if tp is int and isinstance(value, float) and value != int(value):
                raise ValueError(value)
            return out
        if tp is str:
            return str(value)
        if getattr(tp, "__origin__", None) is list:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            (item,) = tp.__args__
            return [_coerce(v, item, path) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{path}' expects {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def named_yaml(name_or_path: str, folder: Path, what: str) -> Path:
    """A .yaml path as given, or the file `<folder>/<name>.yaml`: a preset, a search space."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"{what} file not found: {p}")
        return p
    candidate = folder / f"{name_or_path}.yaml"
    if not candidate.is_file():
        names = sorted(q.stem for q in folder.glob("*.yaml") if not q.stem.startswith("_"))
        raise ConfigError(f"unknown {what} '{name_or_path}'; available: {', '.join(names)} (or a path to a .yaml file)")
    return candidate


def preset_path(name_or_path: str) -> Path:
    return named_yaml(name_or_path, CONFIG_DIR, "preset")


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': the value is not valid YAML ({_yaml_problem(exc)})") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(exc, 'problem', None) or exc}{where}"


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content; ConfigError (not a traceback) when it cannot be read or parsed."""
    try:
        with open(path) as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {_yaml_problem(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def load_config(preset: str = "quick", overrides: list[str] | tuple[str, ...] = (),
                fixed: dict[str, Any] | None = None) -> Config:
    """Preset YAML, then `fixed` ({"section.key": value}, e.g. a tuning spec's budget), then `section.key=value`
    override strings (the command line), validated into a Config."""
    values = read_yaml(preset_path(preset), "preset") or {}
    items = [(k.split("."), v, f"{k}={v!r}") for k, v in (fixed or {}).items()]
    items += [(*parse_override(item), item) for item in overrides]
    _assign(values, items)
    cfg = _from_dict(Config, values, "")
    validate(cfg)
    return cfg


def uses_constant_latent_remedy(cfg: Config) -> bool:
    """Whether stage 1 already runs CONSTANT_LATENT_REMEDY's formulation."""
    return apply_overrides(cfg, list(CONSTANT_LATENT_REMEDY)) == cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """`cfg` with `section.key=value` override strings applied, validated (a new Config)."""
    values = cfg.to_dict()
    _assign(values, [(*parse_override(item), item) for item in overrides])
    return config_from_dict(values)


def _assign(values: dict, items: list[tuple[list[str], Any, str]]) -> None:
    for keys, value, item in items:
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{k}' is not a config section")
        node[keys[-1]] = value


@dataclass(frozen=True)
class Range:
    """A numeric key's allowed interval; None = unbounded, `open_lo` / `open_hi` exclude the bound."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False

    def __contains__(self, v: float) -> bool:
        return ((self.lo is None or (v > self.lo if self.open_lo else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.open_hi else v <= self.hi)))

    def __str__(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{'(' if self.open_lo or self.lo is None else '['}{lo}, {hi}{')' if self.open_hi or self.hi is None else ']'}"


_POS, _NONNEG, _UNIT, _FRAC = Range(0, open_lo=True), Range(0), Range(0, 1), Range(0, 1, open_hi=True)


def _at_least(n: int) -> Range:
    return Range(n)


# The allowed range of every numeric key (a test checks that none is missing; docs/config.md is generated from it).
MAX_CLUSTERS = 1000  # auxiliary classes: far above any factor's levels, far below what would exhaust memory

RANGES: dict[str, Range] = {
    "seed": _NONNEG,
    "data.image_size": _at_least(8), "data.n_images": _NONNEG, "data.noise": _FRAC,
    "data.val_frac": Range(0, 0.5, open_hi=True), "data.labelled_frac": Range(0, 1, open_lo=True), "data.test_frac": Range(0, 1, True, True),
    "disentangle.k": _at_least(2), "disentangle.latent_dim": _at_least(1), "disentangle.principal_subspace": _NONNEG,
    "disentangle.epochs": _at_least(1), "disentangle.restarts": _at_least(1), "disentangle.restart": _NONNEG,
    "disentangle.pairs_per_epoch": _NONNEG, "disentangle.batch_size": _at_least(2),
    "disentangle.lr": _POS, "disentangle.weight_decay": _NONNEG, "disentangle.oracle_prob": _UNIT,
    "disentangle.oracle_temperature": _POS, "disentangle.w_principal": _NONNEG, "disentangle.w_adversary": _NONNEG,
    "disentangle.adversary_hidden": _NONNEG, "disentangle.adversary_lr_scale": _POS,
    "disentangle.margin": _NONNEG, "disentangle.warmup_frac": _UNIT, "disentangle.beta_rise": _POS,
    "disentangle.beta1_center": _UNIT, "disentangle.beta2_center": _UNIT, "disentangle.w_dist": _NONNEG,
    "disentangle.w_spar": _NONNEG, "disentangle.w_cons": _NONNEG, "disentangle.w_reg": _NONNEG,
    "disentangle.spread_floor": _NONNEG,
    "disentangle.cons_swaps": _at_least(1), "disentangle.cons_fraction": Range(0, 1, open_lo=True),
    "disentangle.log_images_every": _at_least(1), "disentangle.scorecard_every": _NONNEG,
    "disentangle.scorecard_images": _at_least(64),
    "discover.min_cluster_frac": Range(0, 0.5, True, True), "discover.min_samples": _at_least(1),
    "discover.n_clusters": Range(0, MAX_CLUSTERS), "discover.max_clusters": Range(2, MAX_CLUSTERS), "discover.meanshift_quantile": Range(0, 1, open_lo=True),
    "discover.fit_subsample": _at_least(100), "discover.knn_k": _at_least(1), "discover.dead_subspace_frac": _FRAC,
    "discover.n_auxiliary": _at_least(1),
    "discover.ica_var_cut": Range(0, 1, open_lo=True, open_hi=True),
    "mtl.seeds": _at_least(1), "mtl.epochs": _at_least(1), "mtl.test_every": _at_least(1),
    "mtl.batch_size": _at_least(2), "mtl.lr": _POS,
    "mtl.weight_decay": _NONNEG, "mtl.width": _at_least(1), "mtl.principal_weight": _NONNEG,
    "mtl.auxiliary_weight": _NONNEG, "mtl.psi": _at_least(2), "mtl.meta_lr": _POS, "mtl.meta_alpha": _POS,
    "mtl.meta_every": _at_least(1), "mtl.entropy_weight": _NONNEG, "mtl.neumann_steps": _at_least(0),
    "mtl.aux_split": Range(0, 0.5, True, True), "mtl.momentum": Range(0, 1, False, True),
    "resources.num_workers": _at_least(1), "resources.cpus_per_worker": _POS, "resources.data_cpus": _POS,
    "resources.torch_threads": _NONNEG, "resources.concurrent_fits": _NONNEG, "resources.max_failures": _NONNEG,
    "disentangle.w_dependence": _NONNEG, "debug.nan_epoch": _at_least(-1), "debug.epoch_pause_s": _NONNEG,
}

# The allowed values of every key that names a choice (for list keys: of each item), written once.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.resize": ("none", "resize", "center_crop"),
    "data.cache": ("auto", "memory", "stream"),
    "disentangle.arch": ("conv", "resnet18"),
    "disentangle.variant": ("detaux", "paper"),
    "disentangle.pulls": ("all", "same", "principal", "alpha"),
    "disentangle.alpha_encoder": ("shared", "private"),
    "disentangle.pair_mode": ("oracle_prob", "random"),
    "discover.criterion": CRITERIA,
    "discover.space": ("subspace", "ica"),
    "discover.clusterer": ("hdbscan", "kmeans", "kmeans++", "meanshift"),
    "discover.backend": ("auto", "cpu", "cuml"),
    "discover.predict": ("knn", "approximate"),
    "mtl.model": ("hps", "nddr", "mti"),
    "mtl.compare": ("hps", "nddr", "mti", "maxl", "auxilearn"),
    "mtl.backbone": ("conv", "resnet18"),
    "mtl.loss_weighting": ("fixed", "uncertainty"),
    "mtl.aux_gradient": ("sum", "reverse"),
    "mtl.lr_schedule": ("constant", "cosine"),
    "mtl.optimizer": ("adamw", "sgd"),
    "resources.amp": ("none", "bf16"),
    "resources.compile": ("none", "default", "reduce-overhead"),
    "resources.placement": ("pack", "spread"),
    "debug.nan_node": ("any", "other"),
}


def _flat(cfg: Config) -> dict[str, Any]:
    out = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def arch_image_size_problem(arch: str, image_size: int) -> str | None:
    """The one rule on stage 1's image sizes (None when fine): the conv autoencoder halves 16, 32 or 64 px down to
    a 4x4 map; the ResNet-18 one takes multiples of 32 from 64 px (its map is image_size / 32 on a side)."""
    if arch == "conv" and image_size not in (16, 32, 64):
        return (f"takes data.image_size 16, 32 or 64, got {image_size}: use disentangle.arch=resnet18 for larger "
                f"images")
    if arch == "resnet18" and (image_size < 64 or image_size % 32):
        return f"needs data.image_size a multiple of 32 and >= 64, got {image_size}"
    return None


def validate(cfg: Config) -> None:
    """Every key's range or choice (RANGES, CHOICES), then the rules that span several keys; a ConfigError names
    the offending key."""
    for key, value in _flat(cfg).items():
        if key in RANGES and value not in RANGES[key]:
            raise ConfigError(f"{key}={value} is out of range: it must be in {RANGES[key]}")
        for item in (value if isinstance(value, list) else [value]) if key in CHOICES else []:
            if item not in CHOICES[key]:
                raise ConfigError(f"{key} takes {', '.join(CHOICES[key])}; got '{item}'")
    d = cfg.disentangle
    if d.principal_subspace >= d.k:
        raise ConfigError(f"disentangle.principal_subspace={d.principal_subspace} must be in [0, k={d.k})")
    problem = arch_image_size_problem(d.arch, cfg.data.image_size)
    if problem:
        raise ConfigError(f"disentangle.arch={d.arch} {problem}")
    if d.restart >= d.restarts:
        raise ConfigError(f"disentangle.restart={d.restart} must be in [0, restarts={d.restarts}) (the pipeline sets it)")
    if d.cons_swaps > d.k:
        raise ConfigError(f"disentangle.cons_swaps must be in [1, k={d.k}], got {d.cons_swaps}")
    if cfg.discover.n_auxiliary > d.k - 1:
        raise ConfigError(f"discover.n_auxiliary must be in [1, k-1={d.k - 1}], got {cfg.discover.n_auxiliary}")
    if cfg.mtl.aux_gradient != "sum" and "hps" not in [cfg.mtl.model, *cfg.mtl.compare]:
        raise ConfigError(f"mtl.aux_gradient={cfg.mtl.aux_gradient} shapes MTL-HPS only; set mtl.model=hps or add hps "
                          f"to mtl.compare")
    if cfg.mtl.pretrained and cfg.mtl.backbone != "resnet18":
        raise ConfigError("mtl.pretrained is for mtl.backbone=resnet18")
    if cfg.mtl.pretrained and not Path(cfg.mtl.pretrained).is_file():
        raise ConfigError(f"mtl.pretrained: weights file not found: {cfg.mtl.pretrained}")
    if cfg.mtl.pretrained:
        _check_state_dict(cfg.mtl.pretrained)
    if cfg.debug.kill_at and len(cfg.debug.kill_at.split(":")) != 3:
        raise ConfigError(f"debug.kill_at must look like stage:epoch:step, got '{cfg.debug.kill_at}'")


def _check_state_dict(path: str) -> None:
    """mtl.pretrained must be a state_dict of tensors (torchvision's resnet18 file, or one under 'state_dict')."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "weights_only" in first or "Weights only" in first:
            first = "it holds objects other than tensors"
        raise ConfigError(f"mtl.pretrained: {path} is not a PyTorch state_dict ({first})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"mtl.pretrained: {path} is not a state_dict (a mapping of parameter names to tensors)")


def ranges_table() -> str:
    """docs/config.md's table: every numeric key's range and every choice key's values (generated; a test keeps
    the file equal to this)."""
    defaults = _flat(Config())
    lines = ["| key | default | allowed |", "|---|---|---|"]
    for key in defaults:
        if key in RANGES:
            lines.append(f"| `{key}` | {defaults[key]} | {RANGES[key]} |")
        elif key in CHOICES:
            lines.append(f"| `{key}` | {defaults[key]} | {' / '.join(CHOICES[key])} |")
    return "\n".join(lines) + "\n"


def config_from_dict(values: dict[str, Any]) -> Config:
    cfg = _from_dict(Config, values, "")
    validate(cfg)
    return cfg
