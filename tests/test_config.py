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
    # Each worker trains on batches of batch_size: more workers, a larger global batch and fewer steps, another result
    d = load_config("quick", ["resources.num_workers=4"])
    assert a.stage_hash("disentangle") != d.stage_hash("disentangle") and a.stage_hash("mtl") != d.stage_hash("mtl")
    assert load_config("quick", ["resources.cpus_per_worker=0.5"]).stage_hash("mtl") == a.stage_hash("mtl")


def test_keys_that_only_change_logging_leave_every_stage_hash_alone():
    from detaux_ray.config import NOT_IN_HASH

    a = load_config("quick")
    for key, value in {"data.cache": "stream", "disentangle.log_images_every": 3, "disentangle.scorecard_every": 0,
                       "disentangle.scorecard_images": 500, "mtl.test_every": 2}.items():
        assert key in NOT_IN_HASH
        b = load_config("quick", [f"{key}={value}"])
        assert all(a.stage_hash(s) == b.stage_hash(s) for s in ("disentangle", "discover", "mtl")), key


def test_each_restart_has_its_own_stage_1_seed_and_hash_and_the_first_is_the_run_without_restarts():
    """disentangle.restarts itself changes no stage's hash (restart 0 of three is the run of one); each restart's
    disentangle.restart gives stage 1 another seed and every stage another hash; the data split's seed stays."""
    one, three = load_config("quick"), load_config("quick", ["disentangle.restarts=3"])
    second = load_config("quick", ["disentangle.restarts=3", "disentangle.restart=1"])
    assert all(one.stage_hash(s) == three.stage_hash(s) != second.stage_hash(s) for s in ("disentangle", "discover", "mtl"))
    assert (three.seed, three.stage1_seed) == (0, 0) and second.seed == 0 and second.stage1_seed not in (0, 1)
    with pytest.raises(ConfigError, match=r"disentangle.restart=3 must be in \[0, restarts=3\)"):
        load_config("quick", ["disentangle.restarts=3", "disentangle.restart=3"])


def test_a_stages_code_version_changes_its_hash_and_every_later_one_only(monkeypatch):
    from detaux_ray import config

    a = load_config("quick")
    before = {s: a.stage_hash(s) for s in ("disentangle", "discover", "mtl")}
    monkeypatch.setitem(config.STAGE_VERSIONS, "discover", config.STAGE_VERSIONS["discover"] + 1)
    assert a.stage_hash("disentangle") == before["disentangle"]
    assert a.stage_hash("discover") != before["discover"] and a.stage_hash("mtl") != before["mtl"]


def test_the_datasets_fingerprint_is_part_of_every_stage_hash():
    a = load_config("quick")
    assert all(a.stage_hash(s, "f1") != a.stage_hash(s, "f2") != a.stage_hash(s) for s in ("disentangle", "discover", "mtl"))


@pytest.mark.parametrize("preset,overrides,match", [
    ("nope", [], "unknown preset 'nope'"),
    ("quick", ["disentangle.kk=3"], "unknown config key.*disentangle.kk"),
    ("quick", ["disentangle.k=three"], "disentangle.k' expects int"),
    ("quick", ["discover.clusterer=dbscan"], "discover.clusterer"),
    ("quick", ["disentangle.principal_subspace=9"], "principal_subspace"),
    ("quick", ["mtl.model=nddr", "mtl.aux_gradient=reverse"], "aux_gradient=reverse shapes MTL-HPS only"),
    ("quick", ["mtl.aux_gradient=cosine"], "mtl.aux_gradient"),
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


def test_a_pretrained_file_that_is_not_a_state_dict_is_refused(tmp_path):
    import torch

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "ok.pt")
    base = ["mtl.backbone=resnet18"]
    with pytest.raises(ConfigError, match="garbage.pt is not a PyTorch state_dict"):
        load_config("quick", base + [f"mtl.pretrained={tmp_path / 'garbage.pt'}"])
    with pytest.raises(ConfigError, match="list.pt is not a state_dict"):
        load_config("quick", base + [f"mtl.pretrained={tmp_path / 'list.pt'}"])
    load_config("quick", base + [f"mtl.pretrained={tmp_path / 'ok.pt'}"])


def test_the_number_of_auxiliary_classes_has_an_upper_bound():
    with pytest.raises(ConfigError, match="discover.n_clusters=1000000 is out of range"):
        load_config("quick", ["discover.n_clusters=1000000"])


def test_a_removed_option_loads_when_off_and_is_refused_when_on():
    """Older runs' config.yaml / best.yaml hold the removed keys at their 'off' value: they still load."""
    from detaux_ray.config import REMOVED, config_from_dict

    old = load_config("quick").to_dict()
    for key, off in REMOVED.items():
        section, name = key.split(".")
        assert config_from_dict({**old, section: {**old[section], name: off}}) == load_config("quick")
    with pytest.raises(ConfigError, match="disentangle.grad_clip was removed .*stage1-study"):
        load_config("quick", ["disentangle.grad_clip=0.5"])
