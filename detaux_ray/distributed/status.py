"""What the training workers tell the driver through Ray: failures that a restart would not heal, and where the
workers ran.

Ray Train restarts a failed worker group up to `resources.max_failures` times, which is right for a lost node and
wrong for a diverged loss or a corrupt image: those would fail the same way again. A worker that meets one records
it on the fit's `StatusBoard`, a small actor on the driver's node; a restarted worker group that finds it stops at
once, and the driver turns it into the user-facing error. The board is an actor, not a file in the run directory,
so that a worker on another node reaches the driver whatever that node's disk holds, and it lives on the driver's
node, so that losing a worker node loses none of it. Each worker also records its node, and rank 0 each start of
the worker group: the report says on how many nodes a stage trained and how often its group restarted. Rank 0's
per-epoch progress messages travel on the same actor (`progress.py`): one small actor per fit, not two.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..errors import DataError, NonFiniteLossError

DIVERGED = "diverged"  # the loss went non-finite
DATA_ERROR = "data_error"  # an image could not be read
_ERRORS = {DIVERGED: NonFiniteLossError, DATA_ERROR: DataError}


@ray.remote(num_cpus=0)  # no CPU: it must never wait for a training slot
class _Board:
    def __init__(self) -> None:
        self.failures: dict[str, str] = {}
        self.marks: set[str] = set()
        self.nodes: dict[int, str] = {}
        self.starts = 0
        self.messages: list[dict] = []  # progress, in the order rank 0 sent them

    def put(self, msg: dict) -> None:
        self.messages.append(msg)

    def take(self) -> list[dict]:
        out, self.messages = self.messages, []
        return out

    def record(self, marker: str, message: str) -> None:
        self.failures.setdefault(marker, message)  # the first message says what happened

    def failure(self) -> tuple[str, str] | None:
        return next(iter(self.failures.items()), None)

    def mark_once(self, name: str) -> bool:
        """True the first time `name` is marked on this board."""
        first = name not in self.marks
        self.marks.add(name)
        return first

    def joined(self, rank: int, node: str) -> None:
        self.nodes[rank] = node
        self.starts += rank == 0

    def placement(self) -> dict[str, int]:
        return {"workers": len(self.nodes), "nodes": len(set(self.nodes.values())), "restarts": max(0, self.starts - 1)}


def on_driver_node() -> dict[str, Any]:
    """Actor options that pin a small driver-side actor (the status board) to the driver's node."""
    node = ray.get_runtime_context().get_node_id()
    return {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


class StatusBoard:
    """The driver's end: `handle` goes into train_loop_config; after fit(), `raise_if_failed()` and `placement()`."""

    def __init__(self) -> None:
        self.driver_node = ray.get_runtime_context().get_node_id()  # workers compare their node with it
        self.handle = _Board.options(**on_driver_node()).remote()

    def raise_if_failed(self) -> None:
        """Raise the error a worker recorded (NonFiniteLossError, DataError), if any."""
        found = ray.get(self.handle.failure.remote())
        if found is not None:
            marker, message = found
            raise _ERRORS[marker](message)

    def placement(self) -> dict[str, int]:
        """{"workers", "nodes", "restarts"}: the worker group's size, on how many nodes it ran, how often it restarted."""
        return ray.get(self.handle.placement.remote())

    def close(self) -> None:
        ray.kill(self.handle)


# The worker's end -------------------------------------------------------------------------------------------------
def record(board, marker: str, message: str) -> None:
    ray.get(board.record.remote(marker, message))


def failed(board) -> bool:
    """True when a worker of this fit already met a failure that a restart would repeat."""
    return ray.get(board.failure.remote()) is not None


def mark_once(board, name: str) -> bool:
    return ray.get(board.mark_once.remote(name))


def joined(board, rank: int) -> None:
    ray.get(board.joined.remote(rank, ray.get_runtime_context().get_node_id()))
