"""The package's one structural rule: the algorithm (everything outside detaux_ray/distributed) imports no Ray."""


def test_core_imports_without_ray():
    import subprocess
    import sys

    code = ("import sys; sys.modules['ray'] = None\n"
            "import detaux_ray.config, detaux_ray.data, detaux_ray.models, detaux_ray.losses, detaux_ray.disentangle, "
            "detaux_ray.pairs, detaux_ray.clustering, detaux_ray.discovery, detaux_ray.mtl, detaux_ray.artifacts, "
            "detaux_ray.report, detaux_ray.search, detaux_ray.statistics, detaux_ray.auxlearn, detaux_ray.scorecard, "
            "detaux_ray.cli, detaux_ray.errors, detaux_ray.data.formats, detaux_ray.data.fixtures")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
