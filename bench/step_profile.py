"""Where one stage-1 step's time goes (no Ray): torch.profiler over N steps of the real training step.

    python bench/step_profile.py --device cuda --out /tmp/profile.json          # the paper preset (compiled), batch 32
    python bench/step_profile.py --device cpu --set data.image_size=16 --steps 3  # seconds (tests/test_bench.py)
    python bench/step_profile.py --device cpu --set resources.compile=none        # the eager step

The H200 run of `bench/gpu_check.py` measured ~20 ms per step at batch 32 *and* at batch 256 (8x the pairs): the
step is bound by per-op overhead, not by arithmetic. This script says by which ops: the step's wall time, the
number of operator calls and of device kernels per step, and the ops with the most self time (CPU and device).
Images are random uint8 at the preset's size: the cost of a step does not depend on what the pixels show.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import _model, _sync  # noqa: E402

from detaux_ray.config import load_config  # noqa: E402
from detaux_ray.disentangle.objective import beta_schedule, compiled_step, optimizer, optimizer_step  # noqa: E402
from detaux_ray.tensors import autocast  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--steps", type=int, default=20, help="profiled steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--amp", default="none", help="none | bf16")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=None, help="JSON to write")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cfg = load_config(args.preset, args.overrides)
    d, size, n_cls = cfg.disentangle, cfg.data.image_size, 8
    rng = np.random.default_rng(0)
    model = _model(cfg, n_cls, device, 0)
    opt = optimizer(model, d, fused=cfg.resources.compile == "none")
    loss_fn, update = compiled_step(opt, cfg.resources.compile)  # the product's step (train_disentangle)
    betas = beta_schedule(0.95 * d.epochs, d)  # every term on

    def step(batch) -> None:
        x1, x2, same, y1, y2 = (torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True) for a in batch)
        with autocast(device, args.amp):
            loss, _, _ = loss_fn(model, x1, x2, same, betas, d, y1=y1, y2=y2)
        optimizer_step(opt, loss, update)

    def batch():
        x = rng.integers(0, 256, (2, d.batch_size, size, size, 3), dtype=np.uint8)
        y = rng.integers(0, n_cls, (2, d.batch_size))
        return x[0], x[1], y[0] == y[1], y[0], y[1]

    batches = [batch() for _ in range(args.warmup + args.steps)]
    for b in batches[:args.warmup]:
        step(b)
    _sync(device)
    t0 = time.perf_counter()
    for b in batches[args.warmup:]:
        step(b)
    _sync(device)
    wall_ms = 1000 * (time.perf_counter() - t0) / args.steps

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for b in batches[args.warmup:]:
            step(b)
        _sync(device)
    events = prof.key_averages()
    n = args.steps
    dev_attr = "self_device_time_total" if device.type == "cuda" else None
    ops = [e for e in events if e.key.startswith("aten::")]
    kernels = [e for e in events if device.type == "cuda" and getattr(e, "device_type", None) is not None
               and str(e.device_type).endswith("CUDA")]
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "preset": args.preset, "overrides": args.overrides, "amp": args.amp,
        "compile": cfg.resources.compile,
        "image_size": size, "batch_size": d.batch_size, "k": d.k, "steps": n,
        "step_wall_ms": round(wall_ms, 3),
        "aten_calls_per_step": round(sum(e.count for e in ops) / n, 1),
        "kernels_per_step": round(sum(e.count for e in kernels) / n, 1),
        "device_busy_ms_per_step": round(sum(getattr(e, dev_attr) for e in kernels) / 1000 / n, 3) if dev_attr else None,
        "top_self_cpu": [{"op": e.key, "calls_per_step": round(e.count / n, 1),
                          "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1000 / n, 3)}
                         for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:args.top]],
    }
    if dev_attr:
        out["top_self_device"] = [{"op": e.key, "calls_per_step": round(e.count / n, 1),
                                   "self_device_ms_per_step": round(getattr(e, dev_attr) / 1000 / n, 3)}
                                  for e in sorted(events, key=lambda e: -getattr(e, dev_attr))[:args.top]]
    print(f"[step_profile] {out['device']}: {wall_ms:.2f} ms/step at batch {d.batch_size}, {size}px, k {d.k}; "
          f"{out['aten_calls_per_step']} aten calls, {out['kernels_per_step']} kernels, device busy "
          f"{out['device_busy_ms_per_step']} ms per step", flush=True)
    for row in out["top_self_cpu"]:
        print(f"  cpu  {row['self_cpu_ms_per_step']:8.3f} ms  {row['calls_per_step']:7.1f}x  {row['op']}")
    for row in out.get("top_self_device", []):
        print(f"  dev  {row['self_device_ms_per_step']:8.3f} ms  {row['calls_per_step']:7.1f}x  {row['op']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if not k.startswith("top_")}))
    return out


if __name__ == "__main__":
    main()
