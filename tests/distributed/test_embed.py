"""distributed/embed.py's clustering task: the same labels as clustering in the driver, hdbscan on the CPUs the
task holds, a GPU asked for when training had GPUs, and our own errors back as themselves."""

import numpy as np
import pytest

from detaux_ray.config import DiscoverConfig, ResourcesConfig


def _blobs(n=600, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0], [6, 0], [0, 6]], np.float32)
    return (centres[rng.integers(0, 3, n)] + rng.normal(0, 0.5, (n, 2))).astype(np.float32)


def test_the_clustering_task_gives_the_drivers_labels_on_the_cpus_it_holds(ray_session):
    from detaux_ray.discover.clustering import cluster
    from detaux_ray.distributed.embed import remote_clusterer

    x, disc = _blobs(), DiscoverConfig(clusterer="hdbscan", backend="cpu", min_cluster_frac=0.05, fit_subsample=300)
    here = cluster(x, disc, 0)
    there = remote_clusterer(ResourcesConfig(num_workers=2, cpus_per_worker=1.0))(x, disc, 0)
    assert there.method == "hdbscan[cpu]" and there.n_clusters == here.n_clusters >= 3
    assert np.array_equal(there.labels, here.labels)  # n_jobs changes the work split, not the labels
    assert there.params["n_jobs"] == 2 and here.params["n_jobs"] == 1 and there.params["predict"] == "knn"


def test_a_single_cluster_comes_back_as_our_error_not_a_ray_traceback(ray_session):
    from detaux_ray.distributed.embed import remote_clusterer
    from detaux_ray.errors import SingleClusterError

    with pytest.raises(SingleClusterError) as info:
        remote_clusterer(ResourcesConfig(cpus_per_worker=0.5))(_blobs(), DiscoverConfig(clusterer="kmeans", n_clusters=1), 0)
    assert type(info.value) is SingleClusterError and "Traceback" not in str(info.value)


def test_the_task_asks_for_a_gpu_with_gpu_training_else_trainings_cpus_on_one_node(ray_session):
    from detaux_ray.distributed.embed import cluster_task_resources

    assert cluster_task_resources(ResourcesConfig(use_gpu=True, num_workers=4)) == {"num_gpus": 1, "num_cpus": 1}
    assert cluster_task_resources(ResourcesConfig(num_workers=1, cpus_per_worker=0.75)) == {"num_cpus": 0.75}
    assert cluster_task_resources(ResourcesConfig(num_workers=4, cpus_per_worker=4)) == {"num_cpus": 2.0}  # the node's 2


def test_inside_a_tune_trial_the_task_is_placed_outside_the_trials_reservation(ray_session):
    """A Tune trial runs in a placement group that captures its child tasks; its bundle (0.1 CPU here) does not
    fit the clustering task's CPUs, which Ray refuses ("cannot fit into any bundles") unless the task is placed
    on the cluster's free resources, as the trial's fits are."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from detaux_ray.distributed.embed import remote_clusterer

    pg = placement_group([{"CPU": 0.1}])
    ray.get(pg.ready())

    @ray.remote(num_cpus=0.1)
    def trial(x):
        disc = DiscoverConfig(clusterer="kmeans", n_clusters=3)
        return remote_clusterer(ResourcesConfig(num_workers=1, cpus_per_worker=0.5))(x, disc, 0).n_clusters

    try:
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
        assert ray.get(trial.options(scheduling_strategy=strategy).remote(_blobs()), timeout=120) == 3
    finally:
        remove_placement_group(pg)
