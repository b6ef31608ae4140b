"""Hyper-parameter search specs (no Ray): a YAML in `detaux_ray/presets/search/` names the base preset, the settings every
trial shares (the tuning budget) and the space each tuned key is sampled from.

    base: quick                      # preset (name or path) the trials start from
    fixed:                           # applied to every trial, e.g. a shorter budget than the preset's
      data.val_frac: 0.1
    space:                           # one sampling domain per config key
      disentangle.k: {choice: [3, 5, 8]}
      disentangle.margin: {loguniform: [0.05, 1.0]}
      discover.min_cluster_frac: {uniform: [0.005, 0.05]}
      disentangle.latent_dim: {randint: [6, 17]}      # [low, high)
    start_with: [{}, {disentangle.k: 8}]              # first trials to run; keys left out take the base's value
    scheduler: {grace_period: 2, reduction_factor: 2} # ASHA on the per-epoch validation accuracy
    trial_cpus: 0.1                                   # the trial's own driver process (its workers ask for more)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from .config import CONFIG_DIR, Config, config_from_dict, load_config, named_yaml, parse_override, read_yaml
from .errors import ConfigError

SEARCH_DIR = CONFIG_DIR / "search"
DOMAINS = ("choice", "uniform", "loguniform", "randint")
METRIC = "val_principal_accuracy"  # principal accuracy on the validation split carved from the training data


@dataclass
class SearchSpec:
    base: str = "quick"
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, dict[str, list]] = field(default_factory=dict)
    start_with: list[dict[str, Any]] = field(default_factory=list)
    scheduler: dict[str, float] = field(default_factory=lambda: {"grace_period": 2, "reduction_factor": 2})
    trial_cpus: float = 0.1

    def base_config(self, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """The base preset with `fixed`, then the CLI overrides, applied; it must carve a validation split."""
        cfg = load_config(self.base, overrides, fixed=self.fixed)
        if cfg.data.val_frac <= 0:
            raise ConfigError("tuning needs a validation split: set data.val_frac > 0 (the objective is principal "
                              "accuracy on it, never on the test split)")
        return cfg


def search_path(name_or_path: str) -> Path:
    return named_yaml(name_or_path, SEARCH_DIR, "search space")


def load_search_spec(name_or_path: str, space_overrides: list[str] | tuple[str, ...] = (), base: str = "") -> SearchSpec:
    """Read and check a search spec; `space_overrides` are `key={choice: [...]}`-style CLI replacements; `base`
    replaces the spec's base preset (a dataset's own preset) before the domains are checked against it."""
    raw = read_yaml(search_path(name_or_path), "search space") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"search space {search_path(name_or_path)} must be a mapping of spec keys")
    known = {f.name for f in dataclasses.fields(SearchSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown search spec key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    spec = SearchSpec(**raw)
    spec.base = base or spec.base
    spec.space = dict(spec.space or {})
    for item in space_overrides:
        keys, value = parse_override(item)
        spec.space[".".join(keys)] = value
    base = spec.base_config().to_dict()
    for key, domain in spec.space.items():
        _check_domain(key, domain, base)
    for point in spec.start_with:
        extra = sorted(set(point or {}) - set(spec.space))
        if extra:
            raise ConfigError(f"start_with point {point} sets {', '.join(extra)}, which the search space does not tune")
    return spec


def start_points(spec: SearchSpec, base: dict) -> list[dict[str, Any]]:
    """`start_with` as complete points {section.key: value}: a key a point leaves out takes the base's value."""
    points = []
    for point in spec.start_with:
        points.append({k: (point or {}).get(k, base[k.partition(".")[0]][k.partition(".")[2]]) for k in spec.space})
    return points


def _check_domain(key: str, domain: Any, base: dict) -> None:
    section, _, name = key.partition(".")
    if section not in base or not isinstance(base[section], dict) or name not in base[section]:
        raise ConfigError(f"search space key '{key}' is not a config key (section.key, e.g. disentangle.k)")
    if section in ("resources", "debug"):
        raise ConfigError(f"search space key '{key}': resources and debug settings are not tunable")
    if not isinstance(domain, dict) or len(domain) != 1 or next(iter(domain)) not in DOMAINS:
        raise ConfigError(f"search space '{key}' must be one of {{{': ..., '.join(DOMAINS)}: ...}}, got {domain!r}")
    kind, args = next(iter(domain.items()))
    if not isinstance(args, list) or not args or (kind != "choice" and len(args) != 2):
        raise ConfigError(f"search space '{key}': {kind} takes {'a list of values' if kind == 'choice' else '[low, high]'}, got {args!r}")
    if kind == "loguniform" and min(args) <= 0:
        raise ConfigError(f"search space '{key}': loguniform bounds must be > 0, got {args}")
    for v in args:  # each value (or both bounds) must be valid for that config key
        trial = {s: dict(v2) if isinstance(v2, dict) else v2 for s, v2 in base.items()}
        trial[section][name] = v
        try:
            config_from_dict(trial)
        except ConfigError as exc:
            raise ConfigError(f"search space '{key}': value {v!r} is invalid: {exc}") from None


def apply_params(base: dict, params: dict[str, Any]) -> Config:
    """The trial's config: `base` with the sampled `section.key` values (nested {section: {key: v}} or flat)."""
    out = {s: dict(v) if isinstance(v, dict) else v for s, v in base.items()}
    for section, value in params.items():
        items = value.items() if isinstance(value, dict) else [(section.partition(".")[2], value)]
        section = section.partition(".")[0]
        for name, v in items:
            out[section][name] = v
    return config_from_dict(out)
