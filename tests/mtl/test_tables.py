"""Stage 3's tables with unlabelled images: STL and the multi-task model get the same steps and the same labelled
images per step; the multi-task model's extra is the auxiliary task on every image."""

import numpy as np
import pyarrow as pa

from detaux_ray.mtl.models import UNLABELLED
from detaux_ray.mtl.tables import labelled_beside_every_image, labelled_only, n_labelled


def _train(principal):
    n = len(principal)
    return pa.table({"row": np.arange(n), "principal": np.asarray(principal, np.int64), "auxiliary": np.arange(n) % 3})


def test_stl_repeats_the_labelled_rows_up_to_the_number_of_training_images():
    t = labelled_only(_train([0, UNLABELLED, 1, UNLABELLED, UNLABELLED, UNLABELLED, UNLABELLED]))
    assert t.column("row").to_pylist() == [0, 2, 0, 2, 0, 2, 0]
    assert UNLABELLED not in t.column("principal").to_pylist()
    full = _train([0, 1, 2, 0])
    assert labelled_only(full).equals(full) and labelled_beside_every_image(full).equals(full)


def test_the_multi_task_table_is_stls_beside_every_image_with_its_principal_masked():
    train = _train([1, UNLABELLED, UNLABELLED, 0, UNLABELLED, UNLABELLED, UNLABELLED, UNLABELLED, UNLABELLED, UNLABELLED])
    t = labelled_beside_every_image(train)
    assert t.num_rows == 2 * train.num_rows and t.schema == train.schema
    first, second = t.slice(0, 10), t.slice(10)
    assert first.equals(labelled_only(train))  # STL's table: the principal loss sees what STL sees, as often
    assert second.column("row").to_pylist() == list(range(10))  # every image once, for the auxiliary heads
    assert set(second.column("principal").to_pylist()) == {UNLABELLED}
    assert second.column("auxiliary").equals(train.column("auxiliary"))
    assert n_labelled(t) == train.num_rows  # at twice the batch size: one batch of labelled images per step
