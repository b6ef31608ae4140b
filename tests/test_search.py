"""detaux_ray/search.py: search specs are checked against the config before anything runs."""

from pathlib import Path

import pytest
import yaml

from detaux_ray.errors import ConfigError
from detaux_ray.search import load_search_spec, start_points

TINY = {"data.n_images": 1200, "data.val_frac": 0.15}


def write_spec(path: Path, **extra) -> Path:
    spec = {"base": "quick", "fixed": TINY, "space": {"discover.n_clusters": {"choice": [1, 4]}},
            "start_with": [{"discover.n_clusters": 4}], **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_search_spec_checks(tmp_path):
    spec = load_search_spec("shapes")
    assert spec.base_config().data.val_frac > 0 and spec.space
    point = start_points(spec, spec.base_config().to_dict())[0]
    assert point["disentangle.k"] == spec.base_config().disentangle.k  # the preset's own values first
    with pytest.raises(ConfigError, match="not a config key"):
        load_search_spec(str(write_spec(tmp_path / "a.yaml", space={"disentangle.kk": {"choice": [3]}})))
    with pytest.raises(ConfigError, match="value 1 is invalid"):
        load_search_spec(str(write_spec(tmp_path / "b.yaml", space={"disentangle.k": {"choice": [1, 3]}}, start_with=[])))
    with pytest.raises(ConfigError, match="loguniform"):
        load_search_spec(str(write_spec(tmp_path / "c.yaml", space={"disentangle.margin": {"loguniform": [0, 1]}}, start_with=[])))
    spec = write_spec(tmp_path / "d.yaml", fixed={**TINY, "data.val_frac": 0.0})
    with pytest.raises(ConfigError, match="validation split"):
        load_search_spec(str(spec))


def test_fixed_values_and_base_preset_apply_before_the_domains_are_checked(tmp_path):
    spec = load_search_spec(str(write_spec(tmp_path / "e.yaml", fixed={"mtl.epochs": 3, "data.val_frac": 0.2})),
                            base="quick")
    cfg = spec.base_config(["mtl.epochs=5"])  # the command line wins over the spec's budget
    assert cfg.mtl.epochs == 5 and cfg.data.val_frac == 0.2 and spec.base == "quick"
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_search_spec(str(write_spec(tmp_path / "f.yaml")), base="nope")
