"""Ray Data: the image cache in the object store, the per-epoch pair stream, and row -> image streams.

Images of a source are rendered (or read) once by parallel Ray tasks into object-store chunks; every stream
gathers from those chunks zero-copy, so no process holds a private copy of the dataset.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from ..data import ImageSource
from ..errors import DataError, find_data_error
from ..disentangle.pairs import sample_pairs, unlabelled_walk

CHUNK = 2048  # rows per object-store chunk


@ray.remote(num_returns=2)
def _render_chunk(source: ImageSource, start: int, stop: int) -> tuple[np.ndarray, bool]:
    return source.images(np.arange(start, stop)), True  # the flag: a tiny object that says the chunk is fine


@dataclass
class ImageCache:
    """Object-store chunks holding every row's uint8 image; picklable into configs and Ray Data functions."""

    chunk_refs: list
    n_rows: int

    @staticmethod
    def build(source: ImageSource, cpus_per_task: float = 0.25) -> "ImageCache":
        src_ref = ray.put(source)
        refs, flags = zip(*[_render_chunk.options(num_cpus=cpus_per_task, scheduling_strategy="DEFAULT").remote(
            src_ref, s, min(s + CHUNK, len(source))) for s in range(0, len(source), CHUNK)])
        try:
            ray.get(list(flags))  # an unreadable image fails here, on the driver, not later inside a training worker
        except Exception as exc:
            message = find_data_error(exc)
            if message:
                raise DataError(message) from None
            raise
        return ImageCache(list(refs), len(source))


_LOCAL_CHUNKS: dict[tuple, list[np.ndarray]] = {}


def _chunks(cache: ImageCache) -> list[np.ndarray]:
    # One ray.get per process and cache (zero-copy views of the shared-memory objects).
    key = tuple(r.hex() for r in cache.chunk_refs)
    if key not in _LOCAL_CHUNKS:
        _LOCAL_CHUNKS.clear()
        _LOCAL_CHUNKS[key] = ray.get(cache.chunk_refs)
    return _LOCAL_CHUNKS[key]


@dataclass
class SourceImages:
    """The streaming alternative to ImageCache: each batch's images are read (or rendered) from the source by the
    Ray Data task that needs them, so memory stays flat however large the dataset is."""

    source: ImageSource

    @property
    def n_rows(self) -> int:
        return len(self.source)


def images_for(source: ImageSource, mode: str, cpus_per_task: float) -> ImageCache | SourceImages:
    """data.cache: 'memory' caches every image in the object store; 'stream' reads per batch; 'auto' caches when
    the images take under 1 GiB (and always for the generated shapes below that size, whose rendering is costly)."""
    if mode == "stream" or (mode == "auto" and source.nbytes > 1 << 30):
        return SourceImages(source)
    return ImageCache.build(source, cpus_per_task)


def gather(cache: ImageCache | SourceImages, rows: np.ndarray) -> np.ndarray:
    """uint8 images for rows (B,), (B, S, S, 3)."""
    if isinstance(cache, SourceImages):
        return cache.source.images(np.asarray(rows, dtype=np.int64))
    chunks = _chunks(cache)
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows),) + chunks[0].shape[1:], dtype=np.uint8)
    c, off = np.divmod(rows, CHUNK)
    for ci in np.unique(c):
        sel = c == ci
        out[sel] = chunks[ci][off[sel]]
    return out


def _gather_pairs(batch: dict[str, np.ndarray], cache: ImageCache) -> dict[str, np.ndarray]:
    out = {"x1": gather(cache, batch["i1"]), "x2": gather(cache, batch["i2"]), "same": batch["same"],
           "y1": batch["y1"], "y2": batch["y2"]}
    if "u" in batch:
        out["xu"] = gather(cache, batch["u"])
    return out


def _gather_rows(batch: dict[str, np.ndarray], cache: ImageCache) -> dict[str, np.ndarray]:
    out = dict(batch)
    out["image"] = gather(cache, batch["row"])
    return out


def pair_table(train_rows: np.ndarray, principal: np.ndarray, n_pairs: int, p_differ: float, seed: int, epoch: int,
               rank: int = 0, world_size: int = 1, batch_size: int = 1, mode: str = "oracle_prob",
               unlabelled_rows: np.ndarray | None = None) -> pa.Table:
    """This rank's share of epoch `epoch`'s pairs (i1, i2 are dataset rows; y1, y2 their principal labels), the
    same for every rank count split.

    unlabelled_rows (training rows without a principal label): each pair also carries one of them, `u`, for the
    reconstruction alone; an epoch walks through them in a seeded order (cycled when there are fewer than pairs).
    Every rank gets the same number of whole batches, so DDP ranks take the same number of steps.
    """
    p1, p2, same = sample_pairs(principal[train_rows], n_pairs, p_differ, seed, epoch, mode)
    per_rank = (n_pairs // world_size) // batch_size * batch_size
    sl = slice(rank, rank + per_rank * world_size, world_size)
    i1, i2 = train_rows[p1[sl]], train_rows[p2[sl]]
    columns = {"i1": i1, "i2": i2, "same": same[sl], "y1": principal[i1], "y2": principal[i2]}
    if unlabelled_rows is not None and len(unlabelled_rows):
        columns["u"] = unlabelled_walk(unlabelled_rows, n_pairs, seed, epoch)[sl]
    return pa.table(columns)


def table_dataset(table: pa.Table) -> ray.data.Dataset:
    # from_blocks builds the dataset in this process. ray.data.from_arrow instead runs a metadata task that asks
    # for a whole CPU, which never schedules once fractional training workers (e.g. two concurrent tuning trials
    # on 2 cores) leave less than one CPU free: the epoch would hang.
    return ray.data.from_blocks([table])


def pair_stream(table: pa.Table, cache: ImageCache, cpus: float, batch_size: int) -> ray.data.Dataset:
    """(x1, x2, same, y1, y2) batches gathered from the cache by Ray Data tasks."""
    return table_dataset(table).map_batches(
        _gather_pairs, fn_kwargs={"cache": cache}, batch_size=batch_size, batch_format="numpy", num_cpus=cpus)


def pair_batches(table: pa.Table, cache: ImageCache | SourceImages, cpus: float, batch_size: int) -> Iterator[dict]:
    """The epoch's (x1, x2, same, y1, y2[, xu]) batches in table order, whole batches only, gathered by Ray Data
    tasks ahead of the step."""
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # this process's datasets
    yield from pair_stream(table, cache, cpus, batch_size).iter_batches(
        batch_size=batch_size, batch_format="numpy", prefetch_batches=2, drop_last=True)


class EpochPairs:
    """Each epoch's pair batches (`pair_batches` over `make_table(epoch)`), the next epoch's stream started while
    the epoch before it ends.

    A new Ray Dataset an epoch waits 0.3-0.8 s for its first batch on 2 cores (bench/README.md, `ray_overhead`):
    `prefetch(e)` builds epoch e's table and takes its first batch on a helper thread, so that the wait overlaps the
    checkpoint and report of the epoch before. `open(e)` returns (table, batches in table order); what the helper
    thread raised (a bad image) is raised there, on the training thread."""

    def __init__(self, make_table: Callable[[int], pa.Table], cache: ImageCache | SourceImages, cpus: float,
                 batch_size: int):
        self._make_table, self._cache, self._cpus, self._batch_size = make_table, cache, cpus, batch_size
        self._ahead: dict[int, tuple[threading.Thread, dict]] = {}

    def prefetch(self, epoch: int) -> None:
        box: dict = {}

        def start() -> None:
            try:
                box["table"] = self._make_table(epoch)
                box["batches"] = pair_batches(box["table"], self._cache, self._cpus, self._batch_size)
                box["first"] = next(box["batches"], None)
            except BaseException as exc:  # re-raised by open(), on the training thread
                box["error"] = exc

        thread = threading.Thread(target=start, name=f"pairs-epoch-{epoch}", daemon=True)
        thread.start()
        self._ahead[epoch] = (thread, box)

    def open(self, epoch: int) -> tuple[pa.Table, Iterator[dict]]:
        if epoch not in self._ahead:
            self.prefetch(epoch)
        thread, box = self._ahead.pop(epoch)
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["table"], _chain_first(box["first"], box["batches"])


def _chain_first(first: dict | None, rest: Iterator[dict]) -> Iterator[dict]:
    if first is not None:
        yield first
        yield from rest


def row_stream(table: pa.Table, cache: ImageCache, cpus: float, batch_size: int = 256) -> ray.data.Dataset:
    """A table with a `row` column, plus an `image` column gathered from the cache."""
    return table_dataset(table).map_batches(
        _gather_rows, fn_kwargs={"cache": cache}, batch_size=batch_size, batch_format="numpy", num_cpus=cpus)
