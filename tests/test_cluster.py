"""Offline checks of the cluster launcher YAMLs (ray's own schema + validate_config) and the KubeRay manifests."""

import copy
import functools
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def _validate_launcher(cfg: dict) -> None:
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(copy.deepcopy(cfg)))


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_yaml_validates_and_has_the_promised_shape(name):
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    _validate_launcher(cfg)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}  # the head runs no training
    assert types["gpu_worker"]["min_workers"] == 0 and types["gpu_worker"]["resources"]["GPU"] == 1
    assert "cpu_worker" in types
    assert cfg["docker"]["image"].startswith("rayproject/ray:2.60.")
    start = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2 and "--dashboard-host=127.0.0.1" in start
    assert any("pip install" in c and "detaux-ray" in c for c in cfg["setup_commands"])


def test_launcher_validation_rejects_a_broken_config():
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["resourcez"] = bad["available_node_types"]["gpu_worker"].pop("resources")
    with pytest.raises(jsonschema.ValidationError):
        _validate_launcher(bad)
    bad = copy.deepcopy(cfg)
    bad["head_node_type"] = "nonexistent"
    with pytest.raises(Exception):
        _validate_launcher(bad)


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


CRDS = CLUSTER / "kuberay" / "crds"  # KubeRay's RayCluster / RayJob CRDs, vendored (see its README)


def _k8s_to_json_schema(node):
    """A CRD's openAPIV3Schema as JSON Schema, with the API server's strict reading: x-kubernetes-int-or-string
    is integer-or-string, nullable admits null, and an object with declared properties refuses unknown fields
    (kubectl's default field validation) unless it preserves them."""
    if isinstance(node, list):
        return [_k8s_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _k8s_to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def _crd_schema(kind: str) -> dict:
    import gzip

    crd = yaml.load(gzip.decompress((CRDS / f"ray.io_{kind.lower()}s.yaml.gz").read_bytes()),
                    Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _k8s_to_json_schema(version["schema"]["openAPIV3Schema"])


def _validate_kuberay(doc: dict) -> None:
    jsonschema.Draft7Validator(_crd_schema(doc["kind"])).validate(doc)


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_validate_against_the_crds(name):
    doc = yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
    _validate_kuberay(doc)
    spec = _cluster_spec(doc)

    def broken(edit):
        bad = copy.deepcopy(doc)
        edit(_cluster_spec(bad))
        return bad

    for bad in (broken(lambda s: s["workerGroupSpecs"][0].update(minReplica=1)),  # a typo: unknown field
                broken(lambda s: s["workerGroupSpecs"][0].update(maxReplicas="eight")),  # wrong type
                broken(lambda s: s["headGroupSpec"]["template"]["spec"].pop("containers")),  # a required field
                broken(lambda s: s["headGroupSpec"].update(serviceType=3))):
        with pytest.raises(jsonschema.ValidationError):
            _validate_kuberay(bad)
    assert spec["workerGroupSpecs"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_structure(name):
    # The fields we rely on, beyond what the CRD requires.
    doc = yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    spec = _cluster_spec(doc)
    assert spec["rayVersion"].startswith("2.60") and spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["serviceType"] == "ClusterIP"
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    if doc["kind"] == "RayJob":
        assert doc["spec"]["shutdownAfterJobFinishes"] is True and "jobs/full_pipeline.py" in doc["spec"]["entrypoint"]
        yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
