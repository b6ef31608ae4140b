"""The Ray Train lines both training stages share: a worker's start, one epoch's report with its checkpoint, the
trainer, fit_interruptible() (Ctrl-C can stop it), and stopping (not restarting) on failures that a restart would repeat."""

from __future__ import annotations

import math
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ..artifacts import save_torch
from ..cli import interrupted, on_sigint
from ..config import Config, ResourcesConfig, config_from_dict
from ..errors import find_data_error
from ..tensors import set_torch_threads
from .logs import quiet_worker, train_log_level
from .progress import Progress, send
from .status import DATA_ERROR, DIVERGED, failed, joined, record


@dataclass
class Worker:
    cfg: Config
    rank: int
    world: int
    device: torch.device
    on_driver_node: bool  # on the node of the driver (and of the fit's status board)


def start_worker(config: dict) -> Worker:
    """A training worker's config, rank, world size and device; its torch threads and seed set."""
    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    # Fits running at once on this node (stage 3) share its cores too.
    set_torch_threads(cfg.resources.torch_threads, ctx.get_local_world_size() * config.get("fits_at_once", 1))
    torch.manual_seed(cfg.seed)
    joined(config["status"], ctx.get_world_rank())  # where this rank runs; rank 0 also counts the group's starts
    on_driver_node = ray.get_runtime_context().get_node_id() == config["driver_node"]
    return Worker(cfg, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(), on_driver_node)


def report(metrics: dict, state: dict | None) -> None:
    """ray.train.report of one epoch, with `state` (rank 0's model / optimizer / epoch; None on the other ranks)
    saved as the checkpoint's state.pt."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if state is not None:
            save_torch(Path(tmp) / "state.pt", state)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def end_epoch(metrics: dict, state: dict, rank: int, progress, items: int, values: dict) -> None:
    """Report the epoch (rank 0's `state` as the checkpoint), then give the driver its progress line (`items`
    trained on, the `values` to show): it prints once the epoch's checkpoint exists."""
    report(metrics, state if rank == 0 else None)
    if rank == 0:
        send(progress, epoch=metrics["epoch"], epoch_time_s=metrics["epoch_time_s"], items=items, values=values)


def diverged(values, rank: int, board, message: str) -> bool:
    """True when an epoch's losses are not all finite on any rank; each rank that saw it records DIVERGED on the
    fit's status board, `message` with its rank and host. Not an exception: Ray Train would restart the worker group
    and diverge again. The ranks decide together (`any_rank`, one all-reduce): each sees only its own batches'
    losses, and a rank that stopped alone would leave the others waiting in the next collective. The driver turns
    the record into NonFiniteLossError."""
    here = not all(math.isfinite(v) for v in values)
    if any_rank(here):
        if here:
            record(board, DIVERGED, f"{message} (seen first on rank {rank}, host {ray.util.get_node_ip_address()})")
        return True
    return False


def any_rank(flag: bool) -> bool:
    """`flag` or-ed over the ranks of the process group (this rank's own flag without one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def torch_trainer(loop: Callable[[dict], None], loop_config: dict, cfg: Config, name: str, storage: str,
                  datasets: dict | None = None, callbacks: list | None = None) -> TorchTrainer:
    """DDP over resources.num_workers workers; the last 2 checkpoints kept under storage/name; a dead worker
    restarts the group from the newest one (resources.max_failures times); Ray Train's INFO lines kept off the
    console. Of `datasets`, only "train" is split between the workers."""
    res = cfg.resources
    return TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                     resources_per_worker={"CPU": res.cpus_per_worker},
                                     placement_strategy=res.placement.upper()),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=["train"]) if datasets else None,
        run_config=RunConfig(name=name, storage_path=str(storage), logging_config=LoggingConfig(train_log_level()),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=res.max_failures), callbacks=callbacks or []),
    )


def fits_held(res: ResourcesConfig, extra_cpus: float = 0.0) -> int:
    """How many training runs of resources `res` the cluster holds at once: its GPUs over the workers per run, or
    its CPUs over a run's request (workers x cpus_per_worker, plus data_cpus left free for its Ray Data tasks and
    `extra_cpus`, e.g. a Tune trial's own process). At least 1."""
    total = ray.cluster_resources()
    if res.use_gpu:
        return max(1, int(total.get("GPU", 0) // res.num_workers))
    need = extra_cpus + res.num_workers * res.cpus_per_worker + res.data_cpus
    return max(1, int(total.get("CPU", 1) // need))


def run_guarded(loop: Callable[[dict], None], config: dict) -> None:
    """Run a train_loop_per_worker body. A data error is recorded on the fit's status board for the driver; a single worker then just
    returns (nothing to retry, no traceback), while DDP workers raise so that Ray stops the ranks still waiting in
    a collective, and the restarted worker group, finding it recorded, returns at once (it would fail the same way,
    as would a diverged loss)."""
    quiet_worker()
    if failed(config["status"]):
        return
    try:
        loop(config)
    except Exception as exc:
        message = find_data_error(exc)
        if message is None:
            raise
        record(config["status"], DATA_ERROR, message)
        if ray.train.get_context().get_world_size() > 1:
            raise


def fit_on_board(trainer: Any, progress: Progress, board: Any) -> tuple[Any, dict]:
    """`fit_interruptible`, then the fit's status board read and closed: (Ray's Result, where the workers ran).

    A failure the workers recorded on the board is raised in place of fit()'s own error: it says what happened
    (a diverged loss, a bad image) better than Ray's traceback."""
    try:
        try:
            result = fit_interruptible(trainer, progress)
        finally:
            board.raise_if_failed()
        return result, board.placement()
    finally:
        board.close()


def fit_interruptible(trainer: Any, progress: Progress | None = None) -> Any:
    """trainer.fit(), with Ctrl-C reaching the caller as KeyboardInterrupt and the run's progress lines printed.

    On the main thread Ray Train replaces the process's SIGINT handler with one that aborts the run and exits the
    process (status 1, nothing said, and the handler stays installed for every later stage). Run from a helper
    thread, fit() leaves signals alone (as under Tune): Ctrl-C interrupts the wait here (our own handler), the pipeline says where
    it stopped, and Ray ends the run's actors when the driver exits; the checkpoints on disk stay for the rerun.
    Meanwhile a second thread prints the epochs that rank 0 reports (`progress`).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    t.start()
    # The progress lines are fetched on a thread of their own, so the main thread makes no Ray calls while it
    # waits: with the polling on the main thread a Ctrl-C was lost once in two test runs (the run went on to the
    # end). Our reading: Ray calls there run ObjectRef finalizers on the main thread, and a KeyboardInterrupt
    # raised inside a finalizer is swallowed by Python.
    done = threading.Event()
    printer = threading.Thread(target=progress.follow, args=(done,), name="progress", daemon=True) if progress else None
    if printer is not None:
        printer.start()
    try:
        wait_interruptibly(lambda: t.join(0.5) or t.is_alive())
    finally:
        # Also on Ctrl-C: a printer left polling while Ray shuts down prints the board actor's death (a CI run).
        done.set()
        if printer is not None:
            printer.join(timeout=5)
    if "error" in box:
        raise box["error"]
    return box["result"]


def wait_interruptibly(busy: Callable[[], bool]) -> None:
    """Wait while busy() (a check that itself waits a little, e.g. a join with a timeout), with Ctrl-C raising
    KeyboardInterrupt here (on the main thread).

    Ctrl-C sets a process-wide flag as well as raising (cli.interrupted): a KeyboardInterrupt that lands inside a
    finalizer is swallowed by Python (a run went on to the end after a Ctrl-C, twice in CI, once before the wait
    began), the flag is not.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main else None
    try:
        while not interrupted.is_set() and busy():
            pass
        if interrupted.is_set():
            raise KeyboardInterrupt
    finally:
        if main and previous is not None:  # None: a handler not set from Python, nothing to restore
            signal.signal(signal.SIGINT, previous)


def run_concurrently(calls: list[Callable[[], Any]], at_once: int) -> list[Any]:
    """Each call on a thread of its own, at most `at_once` running; their results in order.

    The threads are daemons: Ctrl-C (KeyboardInterrupt here) leaves at once and Ray ends the runs' actors when
    the driver exits, as for a single fit(). After a failure no further call starts; the ones running are waited
    for (they hold cluster resources that a caller going on, e.g. a test session, would find taken), then the first
    failure is raised.
    """
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    slots = threading.Semaphore(at_once)
    running: list[threading.Thread] = []

    def target(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)
        finally:
            slots.release()

    for i in range(len(calls)):
        wait_interruptibly(lambda: not slots.acquire(timeout=0.5))
        if errors:
            slots.release()
            break
        t = threading.Thread(target=target, args=(i,), name=f"fit-{i}", daemon=True)
        t.start()
        running.append(t)
    wait_interruptibly(lambda: any(t.join(0.5) or t.is_alive() for t in running))
    if errors:
        raise errors[0]
    return results
