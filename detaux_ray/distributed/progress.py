"""One progress line per epoch, printed once, by the driver.

A training worker is another process: Ray forwards its output with a prefix, folds lines that look alike (log
dedup: "epoch 2/6 ..." and "epoch 3/6 ..." count as alike) and Ray Train prints each line twice. Rank 0 therefore
puts each epoch's numbers on a small queue actor (`send`), and the driver, while it waits for `fit()`, prints them
(`Progress.follow`): one line per epoch with the loss, the throughput and the time left in this training run.
"""

from __future__ import annotations

import threading
from queue import Empty
from typing import Any

import ray
from ray.util.queue import Queue

from .status import on_driver_node


class Progress:
    """The driver's end: `queue` goes into train_loop_config; `drain()` prints what arrived."""

    def __init__(self, tag: str, epochs: int, unit: str):
        self.tag, self.epochs, self.unit = tag, epochs, unit
        self.queue = Queue(actor_options=on_driver_node())  # no CPU (never waits for a training slot), not on a node that may go
        self.epoch_times: list[float] = []

    def drain(self) -> None:
        while True:
            try:
                msg = self.queue.get_nowait()
            except Empty:
                return
            print(self.line(msg), flush=True)

    def follow(self, done: threading.Event, every_s: float = 0.5) -> None:
        """Print what arrives until `done` is set (then once more), or until the queue is gone."""
        try:
            while not done.wait(every_s):
                self.drain()
            self.drain()
        except ray.exceptions.RayError:
            pass  # the queue actor died with its owner (Ctrl-C, shutdown): there is nothing left to print

    def line(self, msg: dict[str, Any]) -> str:
        if "resumed_after" in msg:
            return f"[{self.tag}] resuming after epoch {msg['resumed_after']}/{self.epochs} (the newest checkpoint)"
        self.epoch_times.append(msg["epoch_time_s"])
        left = self.epochs - msg["epoch"] - 1
        eta = left * sum(self.epoch_times) / len(self.epoch_times)
        values = " ".join(f"{k}={v:.4g}" for k, v in msg["values"].items())
        return (f"[{self.tag}] epoch {msg['epoch'] + 1}/{self.epochs} {values} | "
                f"{msg['items'] / max(msg['epoch_time_s'], 1e-9):,.0f} {self.unit}/s | ETA {_duration(eta)}")

    def close(self) -> None:
        ray.kill(self.queue.actor)


def send(queue: Queue | None, **msg: Any) -> None:
    """The worker's end (rank 0): never blocks or fails training (a driver that went away just gets no line)."""
    if queue is None:
        return
    try:
        queue.put_nowait(msg)
    except ray.exceptions.RayError:
        pass  # the driver and its queue are gone: nobody to tell, training goes on to its checkpoint


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

