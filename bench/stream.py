"""Is the pair stream the bottleneck? Pairs per second that Ray Data delivers from DeepMind's `3dshapes.h5` format
(streamed: each task reads its batch's rows from the h5 file) at 64x64, against pairs per second that the stage-1
training step consumes on this machine; and the peak memory of the streaming run at 1x and 10x dataset size.

The h5 fixtures are written by this script in the exact format (images N x 64 x 64 x 3 uint8, labels N x 6 float,
factor values). Memory: the peak summed RSS of every process of the run's own Ray instance (driver, raylet, GCS,
workers) plus the object store's use, sampled every 0.1 s. Last output line: a JSON object of the figures.

    python bench/stream.py                       # 1x = 20,000 images, 10x = 200,000 (2.4 GB of h5), 8,192 pairs
    python bench/stream.py --n 2000 --pairs 1024 # smoke size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_h5(path: Path, n: int, chunk: int = 10_000) -> None:
    import h5py

    rng = np.random.default_rng(0)
    idx = np.arange(n)
    # factor values cycling like the real file's row-major order (orientation fastest)
    labels = np.stack([(idx // 48000) % 10 / 10, (idx // 4800) % 10 / 10, (idx // 480) % 10 / 10,
                       0.75 + ((idx // 60) % 8) / 14, (idx // 15) % 4, -30 + (idx % 15) * 60 / 14], axis=1)
    with h5py.File(path, "w") as f:
        # contiguous, h5py's default layout (chunked files with many rows per chunk read a whole chunk per random
        # row: 64-row chunks measured 477 pairs/s here, 3.7x less)
        images = f.create_dataset("images", (n, 64, 64, 3), dtype=np.uint8)
        for s in range(0, n, chunk):
            images[s:s + chunk] = rng.integers(0, 255, (min(chunk, n - s), 64, 64, 3), dtype=np.uint8)
        f["labels"] = labels


def stream_run(h5: str, pairs: int, batch: int, data_cpus: float) -> dict:
    """Child process: its own Ray; stream `pairs` pairs from the h5 file; report pairs/s and peak memory."""
    import ray

    from detaux_ray.config import load_config
    from detaux_ray.data import build_source
    from detaux_ray.distributed.pipeline import start_local_ray
    from detaux_ray.distributed.streams import images_for, pair_stream, pair_table

    start_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR")  # its own instance, whatever RAY_ADDRESS says
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    peak = {"rss": 0, "store": 0}
    stop = threading.Event()
    def session_rss() -> int:
        """Summed VmRSS (Linux /proc) of this process and every Ray process on the machine (only this run's Ray)."""
        total = 0
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if int(d.name) == os.getpid() or any(m in cmd for m in ("ray::", "raylet", "gcs_server", "ray/_private",
                                                                         "ray/dashboard")):
                    for line in (d / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            except (OSError, ValueError):
                pass
        return total

    def sample() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], session_rss())
            try:
                used = ray.available_resources().get("object_store_memory")
                tot = ray.cluster_resources().get("object_store_memory")
                if used is not None and tot:
                    peak["store"] = max(peak["store"], int(tot - used))
            except Exception:
                pass
            time.sleep(0.1)

    cfg = load_config("quick", ["data.dataset=shapes3d", f"data.path={h5}", "data.image_size=64", "data.n_images=0",
                                "data.noise=0.15", "data.principal=scale"])
    t0 = time.perf_counter()
    src = build_source(cfg.data, 0)
    t_labels = time.perf_counter() - t0
    images = images_for(src, "stream", data_cpus)
    table = pair_table(src.train_rows(), src.principal, pairs, 0.5, 0, 0, batch_size=batch)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    # warm-up epoch (worker start-up), then the timed one
    for _ in pair_stream(table.slice(0, 4 * batch), images, data_cpus, batch).iter_batches(batch_size=batch):
        pass
    t0 = time.perf_counter()
    n = 0
    for b in pair_stream(table, images, data_cpus, batch).iter_batches(batch_size=batch, batch_format="numpy"):
        n += len(b["same"])
    dt = time.perf_counter() - t0
    stop.set()
    th.join()
    ray.shutdown()
    return {"n_images": len(src), "pairs": n, "stream_pairs_per_s": n / dt, "labels_s": t_labels,
            "peak_rss_mb": peak["rss"] / 2**20, "peak_object_store_mb": peak["store"] / 2**20}


def step_rate(batch: int, steps: int) -> float:
    """Pairs per second the stage-1 step (forward, all five losses, backward, AdamW) consumes at 64x64."""
    import torch

    from detaux_ray.config import load_config
    from detaux_ray.disentangle.objective import beta_schedule, detaux_loss
    from detaux_ray.disentangle.models import DisentangleAE
    from detaux_ray.tensors import set_torch_threads, to_float_images

    set_torch_threads(0, 1)
    d = load_config("paper").disentangle  # k = 10, d = 10 at 64x64: the paper's stage 1
    model = DisentangleAE(64, d.k, d.latent_dim, n_principal=8)  # with the principal head, as stage 1 trains
    opt = torch.optim.AdamW(model.parameters(), lr=d.lr)
    rng = np.random.default_rng(0)
    x1 = to_float_images(torch.from_numpy(rng.integers(0, 255, (batch, 64, 64, 3), dtype=np.uint8)))
    x2 = to_float_images(torch.from_numpy(rng.integers(0, 255, (batch, 64, 64, 3), dtype=np.uint8)))
    y1, y2 = torch.from_numpy(rng.integers(0, 8, batch)), torch.from_numpy(rng.integers(0, 8, batch))
    same = y1 == y2
    betas = beta_schedule(d.epochs - 1, d)
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        loss, _, _ = detaux_loss(model, x1, x2, same, betas, d, y1=y1, y2=y2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="images in the 1x fixture (10x is ten times that)")
    ap.add_argument("--pairs", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=32, help="the paper's batch size")
    ap.add_argument("--data-cpus", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(stream_run(args.child, args.pairs, args.batch, args.data_cpus)))
        return
    figures = {"bench": "stream", "machine": f"{platform.machine()}, {os.cpu_count()} cores", "batch": args.batch,
               "pairs": args.pairs, "data_cpus": args.data_cpus, "image_size": 64}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for scale in (1, 10):
            h5 = Path(tmp) / f"3dshapes_{scale}x.h5"
            t0 = time.perf_counter()
            write_h5(h5, args.n * scale)
            print(f"wrote {args.n * scale} images to {h5.name} ({h5.stat().st_size / 2**20:.0f} MB) in "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
            out = subprocess.run([sys.executable, __file__, "--child", str(h5), "--pairs", str(args.pairs),
                                  "--batch", str(args.batch), "--data-cpus", str(args.data_cpus)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{scale:>2}x: {r['n_images']} images, stream {r['stream_pairs_per_s']:.0f} pairs/s, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB, object store {r['peak_object_store_mb']:.0f} MB", flush=True)
            figures[f"x{scale}"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
            h5.unlink()
    consume = step_rate(args.batch, args.steps)
    figures["step_pairs_per_s"] = round(consume, 1)
    figures["stream_over_step"] = round(figures["x1"]["stream_pairs_per_s"] / consume, 2)
    figures["peak_rss_ratio_10x_over_1x"] = round(figures["x10"]["peak_rss_mb"] / figures["x1"]["peak_rss_mb"], 3)
    print(f"stage-1 step consumes {consume:.0f} pairs/s; the stream delivers {figures['stream_over_step']}x that "
          f"(target >= 3); peak memory 10x / 1x = {figures['peak_rss_ratio_10x_over_1x']}", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
