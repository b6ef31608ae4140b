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


# Safe to launch: each rule below is checked on every cluster file ----------------------------------------------
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
KUBERAY = ["raycluster.yaml", "rayjob.yaml"]


def _launcher(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def test_no_cluster_file_opens_anything_to_the_whole_internet():
    for p in [*CLUSTER.glob("*.yaml"), *CLUSTER.glob("kuberay/*.yaml"), CLUSTER / "Dockerfile"]:
        assert "0.0.0.0/0" not in p.read_text() and "::/0" not in p.read_text(), p


def test_aws_nodes_use_the_users_security_group_and_imdsv2():
    """Every node type names the user's group (SSH from their CIDR): for a node type without one, Ray creates a
    group whose SSH rule admits 0.0.0.0/0 (ray.autoscaler._private.aws.config._create_default_ssh_inbound_rules)."""
    cfg = _launcher("aws.yaml")
    for name, t in cfg["available_node_types"].items():
        nc = t["node_config"]
        assert nc.get("SecurityGroupIds"), name
        assert nc["MetadataOptions"]["HttpTokens"] == "required" and nc["MetadataOptions"]["HttpPutResponseHopLimit"] <= 2, name
    assert "security_group" not in cfg["provider"]  # no group of Ray's own making
    assert "--cidr YOUR-IP/32" in (CLUSTER / "aws.yaml").read_text()


def test_gcp_nodes_use_their_own_network_and_the_narrowest_scopes():
    cfg = _launcher("gcp.yaml")
    storage, compute = "https://www.googleapis.com/auth/devstorage.read_write", "https://www.googleapis.com/auth/compute"
    for name, t in cfg["available_node_types"].items():
        nc = t["node_config"]
        (iface,) = nc["networkInterfaces"]
        assert iface["subnetwork"].endswith("/subnetworks/detaux-ray"), name  # not the default network (SSH from anywhere)
        (sa,) = nc["serviceAccounts"]
        assert sa["scopes"] == ([storage, compute] if name == cfg["head_node_type"] else [storage]), name
    assert "--source-ranges=YOUR-IP/32" in (CLUSTER / "gcp.yaml").read_text()


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launchers_mount_the_shared_run_directory_and_install_the_gpu_extra(name):
    cfg = _launcher(name)
    assert any("mount" in c and "/mnt/shared" in c for c in cfg["initialization_commands"])  # on every host
    assert "--volume /mnt/shared:/mnt/shared" in cfg["docker"]["run_options"]  # into every container
    assert cfg["docker"]["image"].endswith("-cu130") and any("[gpu-cu13]" in c for c in cfg["setup_commands"])


def _pod_templates(doc):
    spec = _cluster_spec(doc)
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_pods_run_unprivileged_with_the_shared_volume_and_the_policys_label(name):
    doc = yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
    shared = list(yaml.safe_load_all((CLUSTER / "kuberay" / "shared.yaml").read_text()))
    pvc = next(d for d in shared if d["kind"] == "PersistentVolumeClaim")
    policy = next(d for d in shared if d["kind"] == "NetworkPolicy")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for t in _pod_templates(doc):
        sc = t["spec"]["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["seccompProfile"]["type"] == "RuntimeDefault"
        for c in t["spec"]["containers"]:
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
            assert {"name": "shared", "mountPath": "/mnt/shared"} in c["volumeMounts"]
        assert {"name": "shared", "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}} in t["spec"]["volumes"]
        assert selector.items() <= t["metadata"]["labels"].items()  # the NetworkPolicy covers every pod


def test_the_network_policy_admits_only_named_peers():
    policy = next(d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "shared.yaml").read_text()) if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from") and all(peer.get("podSelector", {}).get("matchLabels") for peer in rule["from"])


def test_the_image_leaves_history_environments_and_runs_out():
    ignored = (CLUSTER.parent / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)
    docker = (CLUSTER / "Dockerfile").read_text()
    assert "FROM rayproject/ray:2.60.0-py311-cu130" in docker and "[gpu-cu13]" in docker and "USER ray" in docker
