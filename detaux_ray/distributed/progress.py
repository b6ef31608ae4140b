"""One progress line per epoch, printed once, by the driver.

A training worker is another process: Ray forwards its output with a prefix, folds lines that look alike (log
dedup: "epoch 2/6 ..." and "epoch 3/6 ..." count as alike) and Ray Train prints each line twice. Rank 0 therefore
puts each epoch's numbers on the fit's status board (`send`; the actor of `status.py`), and the driver, while it
waits for `fit()`, prints them (`Progress.follow`): one line per epoch with the loss, the throughput and the time
left in this training run.
"""

from __future__ import annotations

import threading
from typing import Any

import ray

from .status import StatusBoard


class Progress:
    """The driver's end of the progress lines on `board` (whose `handle` goes into train_loop_config);
    `drain()` prints what arrived."""

    def __init__(self, tag: str, epochs: int, unit: str, board: StatusBoard):
        self.tag, self.epochs, self.unit = tag, epochs, unit
        self.handle = board.handle
        self.epoch_times: list[float] = []

    def drain(self) -> None:
        for msg in ray.get(self.handle.take.remote()):
            print(self.line(msg), flush=True)

    def follow(self, done: threading.Event, every_s: float = 0.5) -> None:
        """Print what arrives until `done` is set (then once more), or until the queue is gone."""
        try:
            while not done.wait(every_s):
                self.drain()
            self.drain()
        except ray.exceptions.RayError:
            pass  # the board died with its owner (Ctrl-C, shutdown): there is nothing left to print

    def line(self, msg: dict[str, Any]) -> str:
        if "resumed_after" in msg:
            return f"[{self.tag}] resuming after epoch {msg['resumed_after']}/{self.epochs} (the newest checkpoint)"
        self.epoch_times.append(msg["epoch_time_s"])
        left = self.epochs - msg["epoch"] - 1
        eta = left * sum(self.epoch_times) / len(self.epoch_times)
        values = " ".join(f"{k}={v:.4g}" for k, v in msg["values"].items())
        return (f"[{self.tag}] epoch {msg['epoch'] + 1}/{self.epochs} {values} | "
                f"{msg['items'] / max(msg['epoch_time_s'], 1e-9):,.0f} {self.unit}/s | ETA {_duration(eta)}")

def send(board, **msg: Any) -> None:
    """The worker's end (rank 0): never blocks or fails training (a driver that went away just gets no line).
    Calls from one process to an actor run in the order they were made, so the lines keep their order."""
    if board is None:
        return
    try:
        board.put.remote(msg)  # not awaited
    except ray.exceptions.RayError:
        pass  # the driver and its board are gone: nobody to tell, training goes on to its checkpoint


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

