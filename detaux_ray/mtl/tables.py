"""Stage 3's training tables when only some training images have their principal label (data.labelled_frac, or a
table's missing labels). Each row is (row, principal, auxiliary...); UNLABELLED marks a missing principal label.

Both tables give a model the same number of steps and the principal head the same labelled examples per step, so
STL against the multi-task model is a comparison of the auxiliary task, not of budgets:
- `labelled_only`: the labelled rows, repeated in order up to the number of training images (STL, the principal-only
  controls, MAXL, AuxiLearn: as a user without Detaux would train).
- `labelled_beside_every_image`: that same table beside every training image with its principal masked, twice the
  rows, for a batch twice as large: each step sees STL's labelled images (the principal loss, a mean over the
  labelled rows, has STL's scale) and as many images of the whole set for the auxiliary task.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .models import UNLABELLED


def n_labelled(train: pa.Table) -> int:
    return int(np.sum(train.column("principal").to_numpy() != UNLABELLED))


def labelled_only(train: pa.Table) -> pa.Table:
    """The labelled rows repeated (in order) up to train.num_rows rows; the table itself when every row is labelled
    or none is."""
    every = train.num_rows
    lab = train.filter(pc.not_equal(train.column("principal"), UNLABELLED))
    if 0 < lab.num_rows < every:
        return pa.concat_tables([lab] * math.ceil(every / lab.num_rows)).slice(0, every)
    return lab


def labelled_beside_every_image(train: pa.Table) -> pa.Table:
    """labelled_only(train) followed by every row of train with its principal set to UNLABELLED (2 x train.num_rows
    rows; train itself when every row is labelled). Shuffled and batched at twice the batch size, a step holds about
    one batch of labelled images and one of any images for the auxiliary heads."""
    if n_labelled(train) in (0, train.num_rows):
        return train
    masked = train.set_column(train.schema.get_field_index("principal"), "principal",
                              pa.array(np.full(train.num_rows, UNLABELLED, np.int64)))
    return pa.concat_tables([labelled_only(train), masked.cast(train.schema)])
