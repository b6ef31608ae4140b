"""Stage 2 on Ray: embed every training image with the stage-1 model in a pool of up to `n_actors` Ray Data actors
(the pipeline gives it as many as training workers), project on all subspaces; then cluster as a Ray task placed
where the accelerator or the cores are (`remote_clusterer`). The choice of subspace, the clustering itself and the
diagnostics are the core's (`detaux_ray.discover.auxiliary`, `detaux_ray.discover.clustering`)."""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import pyarrow as pa
import ray
import torch

from ..discover.clustering import ClusterResult, cluster
from ..config import DiscoverConfig, ResourcesConfig
from ..errors import DetauxError
from ..disentangle.models import DisentangleAE
from ..tensors import autocast, to_device, to_float_images
from .streams import ImageCache, gather, table_dataset


class Embedder:
    """Ray Data actor: holds the trained stage-1 model; rows -> subspace projections s (B, k*d)."""

    def __init__(self, state_ref, image_size: int, k: int, latent_dim: int, arch: str, cache: ImageCache, use_gpu: bool,
                 amp: str = "none"):
        state = ray.get(state_ref[0])  # refs in constructor args are not resolved by Ray Data
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = DisentangleAE.from_state(state, image_size, k, latent_dim, arch).to(self.device, memory_format=torch.channels_last)
        self.model.eval()
        self.cache, self.amp = cache, amp

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = to_device(torch.from_numpy(gather(self.cache, batch["row"])), self.device)
        with torch.no_grad(), autocast(self.device, self.amp):
            s = self.model.subspaces(to_float_images(x))
        return {"row": batch["row"], "s": s.flatten(1).float().cpu().numpy()}


def embed(rows: np.ndarray, model_state: dict, image_size: int, k: int, latent_dim: int, cache: ImageCache,
          cpus: float, use_gpu: bool, amp: str = "none", n_actors: int = 1, batch_size: int = 512,
          arch: str = "conv") -> np.ndarray:
    """Subspace projections (len(rows), k, d), in the order of `rows` (d: the flattened map for arch=resnet18)."""
    state_ref = ray.put(model_state)
    with warnings.catch_warnings():  # Ray Data takes max_restarts through its deprecated **ray_remote_args only
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = table_dataset(pa.table({"row": rows})).map_batches(
            Embedder, fn_constructor_args=([state_ref], image_size, k, latent_dim, arch, cache, use_gpu, amp),
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n_actors), batch_size=batch_size, batch_format="numpy",
            num_cpus=cpus, num_gpus=1 if use_gpu else 0,
            # Not restarted: a lost embedding actor fails the stage, whose rerun embeds again (seconds). A restartable
            # actor whose constructor arguments sit in the object store makes Ray print an error line on every run.
            max_restarts=0)
    got_rows, got_s = [], []
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        got_rows.append(b["row"])
        got_s.append(b["s"])
    r, s = np.concatenate(got_rows), np.concatenate(got_s)
    order = np.argsort(r)  # streaming may reorder blocks; restore the rows' order
    pos = np.searchsorted(r[order], rows)
    return s[order][pos].reshape(len(rows), k, -1)


def _cluster_task(x: np.ndarray, disc: DiscoverConfig, seed: int) -> ClusterResult:
    # hdbscan's core distances on every CPU this task holds; on a GPU node cuML is found there (backend=auto)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return cluster(x, disc, seed, n_jobs=max(1, math.ceil(cpus)))


def cluster_task_resources(res: ResourcesConfig) -> dict:
    """One GPU when training had GPUs (cuML there); else the CPUs training held, which are free once it ended, at
    most one node's: a clustering task runs on one node."""
    if res.use_gpu:
        return {"num_gpus": 1, "num_cpus": 1}
    node_cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=1.0)
    return {"num_cpus": min(res.num_workers * res.cpus_per_worker, node_cpus)}


def remote_clusterer(res: ResourcesConfig) -> Callable[[np.ndarray, DiscoverConfig, int], ClusterResult]:
    """`clustering.cluster` as a Ray task with `cluster_task_resources(res)`; our own errors (one cluster, a bad
    backend) come back as themselves, not as Ray's wrapped traceback. Scheduled on the cluster's free resources, as
    the run's fits are: inside a Tune trial a task would otherwise be placed in the trial's own small reservation,
    which its CPUs or GPU never fit."""
    task = ray.remote(_cluster_task).options(**cluster_task_resources(res), max_retries=0, scheduling_strategy="DEFAULT")

    def run(x: np.ndarray, disc: DiscoverConfig, seed: int) -> ClusterResult:
        try:
            return ray.get(task.remote(x, disc, seed))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, DetauxError):
                raise exc.cause from None
            raise

    return run
