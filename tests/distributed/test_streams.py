import numpy as np

from detaux_ray.config import DataConfig
from detaux_ray.data import build_source


def test_pair_stream_delivers_the_sampled_pairs(ray_session):
    from detaux_ray.distributed.streams import ImageCache, pair_stream, pair_table

    src = build_source(DataConfig(n_images=600, image_size=16), seed=0)
    cache = ImageCache.build(src)
    rows = src.train_rows()
    table = pair_table(rows, src.principal, n_pairs=200, p_differ=0.5, seed=0, epoch=4, batch_size=16)
    assert table.num_rows == 192  # whole batches only
    got = {"i1": [], "x1": [], "x2": [], "i2": [], "same": []}
    for b in pair_stream(table, cache, cpus=0.25, batch_size=64).iter_batches(batch_size=64, batch_format="numpy"):
        for k in ("x1", "x2", "same"):
            got[k].append(b[k])
    x1, x2, same = (np.concatenate(got[k]) for k in ("x1", "x2", "same"))
    i1, i2 = table.column("i1").to_numpy(), table.column("i2").to_numpy()
    # Order may change across blocks; match each delivered pair to its table row through the images themselves.
    assert len(x1) == 192 and same.sum() == table.column("same").to_numpy().sum()
    want = {(a.tobytes(), b.tobytes()) for a, b in zip(src.images(i1), src.images(i2))}
    assert {(a.tobytes(), b.tobytes()) for a, b in zip(x1, x2)} == want
    assert np.array_equal(src.principal[i1] == src.principal[i2], table.column("same").to_numpy())


def test_pair_batches_gathered_in_the_worker_match_the_streamed_ones_in_table_order(ray_session):
    from detaux_ray.distributed.streams import ImageCache, SourceImages, pair_batches, pair_table

    src = build_source(DataConfig(n_images=600, image_size=16), seed=0)
    table = pair_table(src.train_rows(), src.principal, n_pairs=200, p_differ=0.5, seed=0, epoch=2, batch_size=16)
    cached = list(pair_batches(table, ImageCache.build(src), 0.25, 16))  # the in-process gather
    streamed = list(pair_batches(table, SourceImages(src), 0.25, 16))  # Ray Data reads the source
    assert len(cached) == len(streamed) == table.num_rows // 16
    i1, i2 = table.column("i1").to_numpy(), table.column("i2").to_numpy()
    for n, (a, b) in enumerate(zip(cached, streamed)):
        rows = slice(16 * n, 16 * (n + 1))
        assert np.array_equal(a["x1"], src.images(i1[rows])) and np.array_equal(a["x2"], src.images(i2[rows]))
        for key in ("x1", "x2", "same", "y1", "y2"):
            assert np.array_equal(a[key], b[key]), key


def test_epoch_pairs_prefetched_or_not_deliver_each_epochs_batches_in_order_and_raise_the_helpers_error(ray_session):
    import pytest

    from detaux_ray.distributed.streams import EpochPairs, ImageCache, pair_batches, pair_table

    src = build_source(DataConfig(n_images=600, image_size=16), seed=0)
    cache = ImageCache.build(src)

    def table(epoch):
        return pair_table(src.train_rows(), src.principal, n_pairs=96, p_differ=0.5, seed=0, epoch=epoch, batch_size=16)

    pairs = EpochPairs(table, cache, 0.25, 16)
    got = {}
    for epoch in range(3):
        t, batches = pairs.open(epoch)  # epoch 0 started here; 1 and 2 while the epoch before ended
        assert t.equals(table(epoch))
        got[epoch] = list(batches)
        if epoch < 2:
            pairs.prefetch(epoch + 1)
    for epoch in range(3):
        want = list(pair_batches(table(epoch), cache, 0.25, 16))
        assert len(got[epoch]) == len(want) == 6
        for a, b in zip(got[epoch], want):
            assert all(np.array_equal(a[k], b[k]) for k in ("x1", "x2", "same", "y1", "y2"))
    assert not np.array_equal(got[0][0]["x1"], got[1][0]["x1"])  # each epoch its own pairs

    def broken(epoch):
        raise ValueError(f"no pairs for epoch {epoch}")

    failing = EpochPairs(broken, cache, 0.25, 16)
    failing.prefetch(4)
    with pytest.raises(ValueError, match="no pairs for epoch 4"):
        failing.open(4)


def test_pair_table_splits_evenly_across_ranks():
    from detaux_ray.distributed.streams import pair_table

    rows = np.arange(0, 1000, 2)
    principal = np.arange(1000) % 4
    parts = [pair_table(rows, principal, 330, 0.5, 0, 1, rank=r, world_size=3, batch_size=8) for r in range(3)]
    assert {p.num_rows for p in parts} == {104}
    full = pair_table(rows, principal, 330, 0.5, 0, 1)
    assert np.array_equal(parts[1].column("i1").to_numpy(), full.column("i1").to_numpy()[1:312:3])


def test_stage3_training_table_is_shuffled_once_per_fit_seed():
    import pyarrow as pa

    from detaux_ray.distributed.train_mtl import shuffled

    # Rows sorted by class, as an image folder lists them: 256 consecutive rows hold 1-2 classes.
    labels = np.repeat(np.arange(10), 300)
    table = pa.table({"row": np.arange(len(labels)), "principal": labels})
    out = shuffled(table, seed=0)
    rows = out.column("row").to_numpy()
    assert sorted(rows.tolist()) == list(range(len(labels)))  # every row once
    assert (out.column("principal").to_numpy() == labels[rows]).all()  # rows keep their labels
    window = [len(np.unique(out.column("principal").to_numpy()[i:i + 256])) for i in range(0, len(rows) - 256, 256)]
    assert min(window) == 10  # every class in every window of 256 once shuffled
    assert shuffled(table, seed=0).equals(out) and not shuffled(table, seed=1).equals(out)


def test_each_pair_carries_an_unlabelled_image_and_an_epoch_walks_through_them():
    from detaux_ray.distributed.streams import pair_table

    principal = np.arange(1000) % 4
    labelled, unlabelled = np.arange(0, 200), np.arange(200, 600)
    t = pair_table(labelled, principal, 800, 0.5, 0, 3, batch_size=8, unlabelled_rows=unlabelled)
    u = t.column("u").to_numpy()
    assert set(np.unique(u)) == set(unlabelled)  # 800 pairs: every unlabelled row, each twice
    assert np.bincount(u - 200).tolist() == [2] * 400
    assert not np.isin(t.column("i1").to_numpy(), unlabelled).any()  # the pairs stay on labelled rows
    other_epoch = pair_table(labelled, principal, 800, 0.5, 0, 4, batch_size=8, unlabelled_rows=unlabelled)
    assert not np.array_equal(other_epoch.column("u").to_numpy(), u)
    ranks = [pair_table(labelled, principal, 800, 0.5, 0, 3, rank=r, world_size=2, batch_size=8, unlabelled_rows=unlabelled)
             for r in range(2)]
    assert np.array_equal(np.sort(np.concatenate([r.column("u").to_numpy() for r in ranks])), np.sort(u))
    assert "u" not in pair_table(labelled, principal, 80, 0.5, 0, 3, unlabelled_rows=np.array([], int)).column_names
