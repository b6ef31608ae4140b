"""Detaux end to end: disentangle -> discover an auxiliary task -> STL vs multi-task learning, with a report.

    python jobs/full_pipeline.py [--preset NAME_OR_YAML] [--run-dir DIR] [--set section.key=value ...] [--stage-store DIR]
    ray job submit --working-dir . -- python jobs/full_pipeline.py --preset quick

The recipe and its command line are `detaux_ray/recipe.py`; this script is the entry point a Ray job runs.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout / ray job working dir

from detaux_ray.recipe import detaux, main  # noqa: E402

__all__ = ["detaux", "main"]

if __name__ == "__main__":
    sys.exit(main())
