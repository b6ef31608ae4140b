"""distributed/trainer.py: stage 3's fits run several at once (`run_concurrently`), as many as the cluster holds
(`fits_held`); results keep their order, and a failure stops what has not started."""

import threading
import time

import pytest

from detaux_ray.config import ResourcesConfig
from detaux_ray.distributed.trainer import fits_held, run_concurrently


def test_calls_run_at_most_at_once_and_results_keep_their_order():
    lock, running, peak = threading.Lock(), [0], [0]

    def call(i: int):
        def body():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05 * (3 - i % 3))  # later calls finish first
            with lock:
                running[0] -= 1
            return i * i
        return body

    assert run_concurrently([call(i) for i in range(7)], at_once=3) == [i * i for i in range(7)]
    assert peak[0] == 3


def test_a_failure_stops_the_calls_not_started_and_waits_for_the_running_ones():
    started, finished = [], []

    def ok(i: int, s: float):
        def body():
            started.append(i)
            time.sleep(s)
            finished.append(i)
            return i
        return body

    def bad():
        started.append(1)
        raise ValueError("stage 3 (hps) loss became non-finite")

    with pytest.raises(ValueError, match="non-finite"):
        run_concurrently([ok(0, 0.5), bad, ok(2, 0.0), ok(3, 0.0)], at_once=2)
    assert finished == [0]  # the running call ended before the error was raised
    assert sorted(started) == [0, 1]  # ...and no call started after the failure was seen


def test_fits_held_counts_cpus_per_fit_with_its_data_share(ray_session):
    # The test session's Ray has 2 CPUs (conftest).
    assert fits_held(ResourcesConfig(cpus_per_worker=0.75, data_cpus=0.25)) == 2  # the quick preset: STL and HPS at once
    assert fits_held(ResourcesConfig(cpus_per_worker=1.0, data_cpus=0.25)) == 1
    assert fits_held(ResourcesConfig(num_workers=2, cpus_per_worker=0.5, data_cpus=0.25)) == 1
    assert fits_held(ResourcesConfig(cpus_per_worker=0.5, data_cpus=0.2), extra_cpus=0.3) == 2  # a Tune trial's own CPUs
    assert fits_held(ResourcesConfig(use_gpu=True)) == 1  # no GPU here: never 0


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import math
    import os

    import torch.distributed as dist

    from detaux_ray.distributed.trainer import any_rank

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    losses = [1.0, math.nan] if rank == 1 else [1.0, 0.5]  # only rank 1 saw the non-finite loss
    stopped = any_rank(not all(math.isfinite(v) for v in losses))
    with open(f"{out}/{rank}", "w") as fh:
        fh.write(str(stopped))
    dist.destroy_process_group()


def test_ranks_decide_divergence_together(tmp_path):
    """A NaN on one rank stops every rank (none waits alone in the next collective)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "out").mkdir()
    mp.spawn(_rank, args=(2, port, str(tmp_path / "out")), nprocs=2, join=True)
    assert [(tmp_path / "out" / str(r)).read_text() for r in (0, 1)] == ["True", "True"]


def test_auxilearns_held_out_split_never_shares_an_image_with_its_training_rows():
    import numpy as np
    import pyarrow as pa

    from detaux_ray.distributed.train_mtl import auxiliary_split

    plain = pa.table({"row": np.arange(100), "principal": np.zeros(100, np.int64)})
    train, held = auxiliary_split(plain, 0.2, seed=0)
    assert held.num_rows == 20 and train.num_rows == 80
    repeated = pa.concat_tables([plain.slice(0, 10)] * 10)  # ten labelled images, each ten times (few labels)
    train, held = auxiliary_split(repeated, 0.2, seed=0)
    tr, he = set(train.column("row").to_pylist()), set(held.column("row").to_pylist())
    assert len(he) == 2 and not tr & he and held.num_rows == 20


def test_a_ctrl_c_swallowed_before_the_wait_still_stops_it():
    """A KeyboardInterrupt raised inside a finalizer is lost (Python swallows it); the run's flag is not: the next
    wait for Ray raises at once instead of waiting for a fit to finish (a CI run went on after its Ctrl-C)."""
    from detaux_ray.cli import interrupted
    from detaux_ray.distributed.trainer import wait_interruptibly

    interrupted.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            wait_interruptibly(lambda: time.sleep(0.01) or True)  # a fit that would never end
    finally:
        interrupted.clear()
    polls = []
    wait_interruptibly(lambda: polls.append(1) or len(polls) < 3)  # no Ctrl-C: it waits until done
    assert len(polls) == 3
