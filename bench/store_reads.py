"""Reading an image folder from an object store vs the local disk, one file at a time vs READ_THREADS at once.

The reader reads one file at a time from a local disk and READ_THREADS at once from a store (`formats.read_threads`);
here both sources are read both ways, to show what each choice costs where it is not taken.

The same PNG files are read through `FileReader.read` (what every Ray Data reader task calls) from a local folder
and from an S3 API on localhost (moto's server, authentication on, as in the tests), in batches of --batch rows,
alternating rounds. A local S3 server answers without a network's round trip, and moto, a Python server on the
same cores, is CPU-bound, so concurrency buys little against it. `--latency-ms` puts a relay in front of it that
holds each request for that long before passing it on, as a bucket in another zone or region would
(S3's time to first byte is typically 10-50 ms): the s3 figures are then read through the relay.

    python bench/store_reads.py [--images 512] [--batch 64] [--rounds 3] [--latency-ms 20]

Ends with one JSON line: images/s per (source, threads) and the concurrent / sequential ratio per source.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/s3_server.py starts the S3 API, dataset_files writes PNGs


class DelayRelay:
    """A TCP relay on localhost to `target` (host, port) that holds each chunk a client sends for `delay_s` before
    passing it on: every HTTP request then waits that long, on its own connection, as over a real network."""

    def __init__(self, target: tuple[str, int], delay_s: float):
        import socket
        import threading

        self.target, self.delay_s = target, delay_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, self.delay_s), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, delay_s: float) -> None:
        try:
            while data := src.recv(65536):
                if delay_s:
                    time.sleep(delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(2)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--image-px", type=int, default=64, help="side of each stored PNG")
    ap.add_argument("--batch", type=int, default=64, help="rows per read call, as a Ray Data batch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=0.0, help="hold each request this long (0: no relay)")
    args = ap.parse_args()

    from dataset_files import png_bytes, random_image
    from s3_server import S3Server

    from detaux_ray.data import formats

    concurrent = formats.READ_THREADS
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        (folder / "a").mkdir(parents=True)
        files = [f"a/{i}.png" for i in range(args.images)]
        for f in files:
            (folder / f).write_bytes(png_bytes(random_image(args.image_px, args.image_px)))
        server = S3Server()
        try:
            uri = server.upload(folder, "images")
            os.environ.update(server.env)
            relay = None
            if args.latency_ms > 0:
                host, port = server.endpoint.rsplit("//", 1)[1].split(":")
                relay = DelayRelay((host, int(port)), args.latency_ms / 1000)
                os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{relay.port}"
            sources = {"local": str(folder), "s3": uri}
            readers = {s: formats.FileReader(p, files, 32, "resize") for s, p in sources.items()}
            rows = np.arange(args.images)
            reference = readers["local"].read(rows)
            assert np.array_equal(readers["s3"].read(rows), reference), "the store gave other pixels"
            rates: dict[str, list[float]] = {f"{s}_{t}": [] for s in sources for t in (1, concurrent)}
            for _ in range(args.rounds):
                for s, reader in readers.items():
                    for t in (1, concurrent):
                        formats.read_threads = lambda fs, t=t: t
                        t0 = time.perf_counter()
                        for start in range(0, args.images, args.batch):
                            reader.read(rows[start:start + args.batch])
                        rates[f"{s}_{t}"].append(args.images / (time.perf_counter() - t0))
        finally:
            server.stop()
            if args.latency_ms > 0 and relay is not None:
                relay.close()
    med = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    for k, v in med.items():
        print(f"{k:>10} threads: {v:8.1f} images/s  (rounds: {', '.join(f'{x:.0f}' for x in rates[k])})")
    print(json.dumps({"images": args.images, "image_px": args.image_px, "batch": args.batch, "rounds": args.rounds,
                      "latency_ms": args.latency_ms,
                      "threads": concurrent, "images_per_s": med,
                      "ratio_local": round(med[f"local_{concurrent}"] / med["local_1"], 2),
                      "ratio_s3": round(med[f"s3_{concurrent}"] / med["s3_1"], 2),
                      "s3_vs_local": round(med[f"s3_{concurrent}"] / med[f"local_{concurrent}"], 2)}))


if __name__ == "__main__":
    main()
