"""Save a grid of `shapes` samples, one row per factor varied from a base scene (docs/shapes_factors.png)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from detaux_ray.data.shapes import FACTOR_NAMES, ShapesRenderer, factor_grid  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--out", default="docs/shapes_factors.png")
    args = ap.parse_args()
    grid = factor_grid(ShapesRenderer(size=args.size, noise=args.noise))  # (6, 10, S, S, 3)
    s = args.size
    pad = 2
    canvas = np.full((6 * (s + pad), 10 * (s + pad), 3), 255, np.uint8)
    for r in range(6):
        for c in range(10):
            canvas[r * (s + pad): r * (s + pad) + s, c * (s + pad): c * (s + pad) + s] = grid[r, c]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(args.out)
    print(f"wrote {args.out}: rows = {', '.join(FACTOR_NAMES)}")


if __name__ == "__main__":
    main()
