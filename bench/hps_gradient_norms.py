"""How large is the auxiliary task's gradient at MTL-HPS's shared features? Trains one HPS fit the way
`bench/mtl_study.py` does (plain PyTorch, a finished run's labels) and prints, per epoch, the mean over steps of
|g_p|^2 and |g_a|^2 (g = dL/dh at the pooled backbone output h, loss weights included), their ratio, and the share
of steps where cos(g_p, g_a) > 0. The fit itself is the plain sum (the gradients are only read):

    python bench/hps_gradient_norms.py --run-dir runs/quick [--set mtl.lr=0.002] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import detaux_ray.mtl.models as mtl  # noqa: E402
from detaux_ray.config import load_config  # noqa: E402
from detaux_ray.data import build_source  # noqa: E402
from mtl_study import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seen: list[tuple[float, float, float]] = []
    plain = mtl.combine_task_gradients

    def read(g_p, g_aux, mode):  # the fork hands us the separate gradients; combine them as the plain sum
        seen.append((float(g_p.square().sum()), float(g_aux[0].square().sum()), float((g_p * g_aux[0]).sum())))
        return plain(g_p, g_aux, "sum")

    mtl.combine_task_gradients = read
    run = Path(args.run_dir)
    cfg = load_config(str(run / "config.yaml"), args.set + ["mtl.aux_gradient=reverse"])  # a non-sum mode forks h; `read` sums
    src = build_source(cfg.data, cfg.seed)
    labels = pq.read_table(run / "discover" / "labels.parquet").to_pydict()
    targets = {t: np.asarray(v) for t, v in labels.items() if t == "principal" or t.startswith("auxiliary")}
    test_rows = src.test_rows()
    r = train(cfg, "hps", src.images(np.asarray(labels["row"])), targets,
              (src.images(test_rows), src.principal[test_rows]), args.seed)
    per_epoch = len(seen) // cfg.mtl.epochs
    for e in range(cfg.mtl.epochs):
        a = np.array(seen[e * per_epoch:(e + 1) * per_epoch])
        print(f"epoch {e}: |g_p|^2 {a[:, 0].mean():.3e}  |g_a|^2 {a[:, 1].mean():.3e}  ratio "
              f"{a[:, 1].mean() / a[:, 0].mean():.3f}  cos > 0 at {np.mean(a[:, 2] > 0):.2f} of steps  "
              f"test accuracy {r['curve'][e]}")


if __name__ == "__main__":
    main()
