from pathlib import Path

import pytest

from detaux_ray.config import CHOICES, RANGES, Config, _flat, load_config, ranges_table
from detaux_ray.errors import ConfigError


def test_presets_load_and_overrides_apply():
    cfg = load_config("quick", ["disentangle.k=7", "data.principal=shape", "resources.use_gpu=false"])
    assert cfg.disentangle.k == 7 and cfg.data.principal == "shape" and cfg.resources.use_gpu is False
    paper = load_config("paper")
    assert (paper.data.image_size, paper.disentangle.k, paper.disentangle.batch_size, paper.disentangle.lr,
            paper.disentangle.epochs, paper.mtl.epochs) == (64, 10, 32, 5e-4, 40, 150)


def test_stage_hash_tracks_upstream_only():
    a = load_config("quick")
    b = load_config("quick", ["mtl.epochs=3"])
    c = load_config("quick", ["disentangle.k=4"])
    assert a.stage_hash("disentangle") == b.stage_hash("disentangle") and a.stage_hash("mtl") != b.stage_hash("mtl")
    assert a.stage_hash("discover") != c.stage_hash("discover")
    d = load_config("quick", ["resources.num_workers=4"])  # scaling out never invalidates results
    assert a.stage_hash("mtl") == d.stage_hash("mtl")


@pytest.mark.parametrize("preset,overrides,match", [
    ("nope", [], "unknown preset 'nope'"),
    ("quick", ["disentangle.kk=3"], "unknown config key.*disentangle.kk"),
    ("quick", ["disentangle.k=three"], "disentangle.k' expects int"),
    ("quick", ["discover.clusterer=dbscan"], "discover.clusterer"),
    ("quick", ["disentangle.principal_subspace=9"], "principal_subspace"),
    ("quick", ["mtl.model=nddr", "mtl.aux_gradient=project"], "aux_gradient=project shapes MTL-HPS only"),
    ("quick", ["novalue"], "section.key=value"),
])
def test_bad_config_is_one_clear_error(preset, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(preset, overrides)


ROOT = Path(__file__).resolve().parent.parent


def _outside(key: str) -> float:
    """A value just outside RANGES[key]."""
    r = RANGES[key]
    is_int = isinstance(_flat(Config())[key], int)
    if r.lo is not None:
        return r.lo - 1 if is_int or not r.open_lo else r.lo
    return r.hi + 1 if is_int or not r.open_hi else r.hi


def test_every_numeric_key_has_a_range_that_refuses_values_outside_it():
    flat = _flat(Config())
    numeric = {k for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric == set(RANGES), f"keys without a documented range: {sorted(numeric - set(RANGES))}"
    for key in RANGES:
        with pytest.raises(ConfigError, match=f"^{key}=.* is out of range: it must be in "):
            load_config("quick", [f"{key}={_outside(key)}"])
        with pytest.raises(ConfigError, match=key):
            load_config("quick", [f"{key}=.nan"])


def test_every_choice_key_refuses_other_values():
    for key in CHOICES:
        value = "[nope]" if isinstance(_flat(Config())[key], list) else "nope"
        with pytest.raises(ConfigError, match=f"^{key} takes .*; got 'nope'"):
            load_config("quick", [f"{key}={value}"])


def test_the_documented_ranges_are_the_code_ranges():
    doc = (ROOT / "docs" / "config.md").read_text()
    assert ranges_table() in doc, "docs/config.md is stale: regenerate its table with detaux_ray.config.ranges_table()"
