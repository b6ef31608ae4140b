import pytest

from detaux_ray.config import load_config
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
    ("quick", ["novalue"], "section.key=value"),
])
def test_bad_config_is_one_clear_error(preset, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(preset, overrides)
