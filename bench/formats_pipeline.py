"""Every real-dataset loader through the whole pipeline (disentangle -> discover -> STL / MTL) on a tiny fixture
written in the format's exact on-disk layout (the writers of detaux_ray/data/fixtures.py), streamed through Ray Data.

Prints one line per format (exit code, wall time, STL / MTL accuracy, auxiliary classes); the last line is JSON.

    python bench/formats_pipeline.py [--formats cifar10,svhn]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "jobs"), str(ROOT / "tests")]  # tests/dataset_files.py writes each format

TINY = ["data.n_images=0", "data.cache=stream", "disentangle.k=3", "disentangle.epochs=2", "disentangle.pairs_per_epoch=128",
        "disentangle.batch_size=16", "discover.clusterer=kmeans++", "discover.n_clusters=3", "mtl.epochs=1", "mtl.width=8",
        "mtl.batch_size=16", "resources.cpus_per_worker=0.5", "resources.data_cpus=0.25"]


def main() -> None:
    import full_pipeline

    from dataset_files import FORMATS
    from detaux_ray.distributed.pipeline import start_local_ray

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default=",".join(sorted(FORMATS)))
    args = ap.parse_args()
    start_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    figures = {"bench": "formats_pipeline", "settings": TINY, "formats": {}}
    for name in args.formats.split(","):
        writer, overrides = FORMATS[name]
        with tempfile.TemporaryDirectory() as tmp:
            path = writer(Path(tmp))
            argv = ["--run-dir", str(Path(tmp) / "run")]
            for item in [f"data.dataset={name}", f"data.path={path}", *overrides, *TINY]:
                argv += ["--set", item]
            t0 = time.time()
            code = full_pipeline.main(argv)
            r = {"exit_code": code, "wall_s": round(time.time() - t0, 1)}
            if code == 0:
                rep = json.loads((Path(tmp) / "run" / "report.json").read_text())
                r |= {"n_train": rep["dataset"]["n_train"], "n_test": rep["dataset"]["n_test"],
                      "stl_accuracy": rep["stl_accuracy"], "mtl_accuracy": rep["mtl_accuracy"],
                      "n_aux_classes": rep["n_aux_classes"]}
            figures["formats"][name] = r
            print(f"{name:12s} {r}", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
