"""Ray overhead of stage 1: one epoch through Ray Data (pair stream) + Ray Train (TorchTrainer, 1 worker) vs the
same steps in a plain PyTorch loop over the same pairs, in one run.

Both train the same model on the same epoch's pairs with every loss term on (no warm-up); each runs a first epoch
to warm up and the second is timed. The Ray figure is the epoch time measured inside the worker (trainer start-up,
about 30 s here, is reported separately). The two alternate, plain then Ray, for --rounds rounds, so load from
anything else on the machine hits both alike; the ratio is the median of the per-round ratios. The last output
line is JSON.

    python bench/ray_overhead.py                       # 32x32, the quick preset's 14,000 images, batch 64
    python bench/ray_overhead.py --n-images 600 --image-size 16 --rounds 2   # smoke size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from detaux_ray.config import load_config  # noqa: E402
from detaux_ray.data import build_source  # noqa: E402
from detaux_ray.disentangle.objective import beta_schedule, build_model, detaux_loss, optimizer  # noqa: E402
from detaux_ray.tensors import to_float_images  # noqa: E402
from detaux_ray.disentangle.pairs import sample_pairs  # noqa: E402


def plain_epoch_time(cfg, source, epoch: int) -> float:
    d = cfg.disentangle
    torch.manual_seed(cfg.seed)
    rows = source.train_rows()
    images = torch.from_numpy(source.images(rows))  # the same images, held in memory
    n_principal = source.n_principal_classes if d.formulation()[0] > 0 else 0
    labels = torch.from_numpy(source.principal[rows])
    # The model the Ray stage builds (build_model: the private alpha encoder and the adversary included), so the two
    # loops time the same network.
    model = build_model(d, cfg.data.image_size, n_principal).to(memory_format=torch.channels_last)
    opt = optimizer(model, d)  # the Ray stage's optimiser (the adversary at its own rate)
    n_pairs = d.pairs_per_epoch or len(rows)
    times = []
    for e in range(epoch + 1):
        t0 = time.perf_counter()
        i1, i2, same = sample_pairs(source.principal[rows], n_pairs, d.oracle_prob, cfg.seed, e)
        steps = n_pairs // d.batch_size
        for s in range(steps):
            sl = slice(s * d.batch_size, (s + 1) * d.batch_size)
            loss = detaux_loss(model, to_float_images(images[i1[sl]]), to_float_images(images[i2[sl]]),
                               torch.from_numpy(same[sl]), beta_schedule(e + s / steps, d), d,
                               y1=labels[i1[sl]], y2=labels[i2[sl]])[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=14000)  # the quick preset's dataset
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="alternating (plain, Ray) measurements")
    ap.add_argument("--pairs", type=int, default=0, help="pairs per epoch (default 0: the quick preset's)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="config overrides (section.key=value)")
    args = ap.parse_args()
    overrides = [f"data.n_images={args.n_images}", f"data.image_size={args.image_size}", "disentangle.epochs=2",
                 "disentangle.warmup_frac=0", f"disentangle.batch_size={args.batch}", "disentangle.k=5",
                 "disentangle.log_images_every=1000"] + ([f"disentangle.pairs_per_epoch={args.pairs}"] if args.pairs else []) + args.overrides
    cfg = load_config("quick", overrides)
    source = build_source(cfg.data, cfg.seed)

    import ray

    from detaux_ray.distributed import train_disentangle
    from detaux_ray.distributed.pipeline import ensure_ray
    from detaux_ray.distributed.streams import ImageCache

    ensure_ray()
    cache = ImageCache.build(source, cfg.resources.data_cpus)
    plain, ray_epoch, fit_s = [], [], []
    for r in range(args.rounds):
        plain.append(plain_epoch_time(cfg, source, epoch=1))
        with tempfile.TemporaryDirectory() as tmp:  # a fresh run each round: nothing to resume
            t0 = time.perf_counter()
            out = train_disentangle.run(cfg, source.train_rows(), source.principal, cache, Path(tmp) / "tb",
                                        str(Path(tmp) / "ckpt"))
            fit_s.append(time.perf_counter() - t0)
        ray_epoch.append(float(out["metrics"]["epoch_time_s"]))
        print(f"round {r + 1}/{args.rounds}: plain {plain[-1]:.2f}s, Ray {ray_epoch[-1]:.2f}s "
              f"-> {ray_epoch[-1] / plain[-1]:.3f}", flush=True)
    ratios = [t_r / t_p for t_r, t_p in zip(ray_epoch, plain)]
    figures = {"bench": "ray_overhead", "image_size": args.image_size, "n_train_pairs": int(out["metrics"]["pairs"]),
               "batch": args.batch, "rounds": args.rounds, "plain_epoch_s": [round(t, 2) for t in plain],
               "ray_epoch_s": [round(t, 2) for t in ray_epoch], "ratios": [round(x, 3) for x in ratios],
               "ratio": round(float(np.median(ratios)), 3), "target_ratio": 1.10,
               "fit_total_s_2_epochs": [round(t, 1) for t in fit_s],
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "ray": ray.__version__}
    print(f"epoch (steady state), median of {args.rounds} alternating rounds: ratio Ray / plain {figures['ratio']} "
          f"(per round {figures['ratios']}; whole 2-epoch fit incl. start-up {np.median(fit_s):.0f}s)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
