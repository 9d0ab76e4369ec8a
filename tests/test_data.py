"""Tests of mtl_jax.data: Dataset batching, MultiSource, MultiDigits, synthetic tasks."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from mtl_jax.data import (
    Dataset,
    MultiSource,
    multidigit_pairs,
    multidigits,
    pooled_features,
    source_pools,
    synthetic_images,
)


def toy(n=10, name="toy"):
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    return Dataset(x, {"a": np.arange(n, dtype=np.int32), "b": -np.arange(n, dtype=np.float32)},
                   name)


@pytest.fixture(scope="module")
def small_digits():
    return multidigits(num_train=500, num_test=200, seed=3)


# --- Dataset ---------------------------------------------------------------------------------

def test_dataset_validation():
    with pytest.raises(ValueError, match="dataset 'void' is empty"):
        Dataset(np.zeros((0, 2, 2, 1), np.float32), {}, "void")
    with pytest.raises(ValueError, match=r"task 'a'.* 3 labels for 4 images"):
        Dataset(np.zeros((4, 2, 2, 1), np.float32), {"a": np.zeros(3)}, "bad")
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        Dataset(np.zeros((4, 2, 2), np.float32), {}, "flat")


def test_subset_and_select():
    ds = toy()
    sub = ds.subset([3, 1])
    assert len(sub) == 2 and sub.y["a"].tolist() == [3, 1] and sub.x[:, 0, 0, 0].tolist() == [3, 1]
    assert list(ds.select(["b"]).y) == ["b"]
    assert list(ds.select("a").y) == ["a"]
    with pytest.raises(KeyError, match="'nope'"):
        ds.select(["a", "nope"])


def test_batch_is_a_pure_function_of_seed_and_step():
    ds = toy(23)
    first = [ds.batch(s, 5, seed=7) for s in range(12)]
    # Resuming at step 6 (in a new epoch order) replays the same batches.
    resumed = [ds.batch(s, 5, seed=7) for s in range(6, 12)]
    for a, b in zip(first[6:], resumed):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"]["a"], b["y"]["a"])
    assert not ds.batch_indices(3, 5, seed=7).flags.writeable  # the cached order is shared
    other = [ds.batch(s, 5, seed=8)["y"]["a"] for s in range(4)]
    assert not all(np.array_equal(o, f["y"]["a"]) for o, f in zip(other, first))
    for batch in first:
        assert batch["x"].shape == (5, 1, 1, 1) and batch["x"].dtype == np.float32
        np.testing.assert_array_equal(batch["x"][:, 0, 0, 0], batch["y"]["a"])
        np.testing.assert_array_equal(batch["y"]["b"], -batch["y"]["a"])


@pytest.mark.parametrize("n,batch_size", [(23, 5), (20, 5), (7, 7), (7, 1)])
def test_each_epoch_covers_every_example_at_most_once(n, batch_size):
    ds = toy(n)
    steps = n // batch_size
    epochs = []
    for epoch in range(3):
        seen = np.concatenate([ds.batch(epoch * steps + s, batch_size, seed=1)["y"]["a"]
                               for s in range(steps)])
        assert len(seen) == len(set(seen.tolist())) == steps * batch_size
        epochs.append(seen)
    if n == steps * batch_size:  # no remainder: each epoch sees every example exactly once
        assert all(sorted(e.tolist()) == list(range(n)) for e in epochs)
    if n > 2:
        assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch


def test_batch_errors():
    ds = toy(10, name="tiny")
    for bad in (11, 0, -2):
        with pytest.raises(ValueError, match=rf"tiny.*batch_size={bad} for 10 examples"):
            ds.batch(0, bad, seed=0)
    with pytest.raises(ValueError, match="step"):
        ds.batch(-1, 2, seed=0)
    with pytest.raises(ValueError, match="seed"):
        ds.batch(0, 2, seed=-1)
    with pytest.raises(ValueError, match="batch_size"):
        ds.eval_batches(0)


def test_eval_batches_cover_the_set_in_order():
    ds = toy(11)
    batches = list(ds.eval_batches(4))
    assert [len(b["x"]) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([b["y"]["a"] for b in batches]), np.arange(11))
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), ds.x)


# --- MultiSource -----------------------------------------------------------------------------

def test_multisource_streams():
    ds = toy(40)
    multi = MultiSource({"a": ds, "b": ds.subset(np.arange(12))})
    assert multi.names == ("a", "b")
    batch = multi.batch(3, 4, seed=0)
    assert set(batch["x"]) == set(batch["y"]) == {"a", "b"}
    # Each task's labels are its own source's labels for that task, for the same examples.
    np.testing.assert_array_equal(batch["x"]["a"][:, 0, 0, 0], batch["y"]["a"])
    np.testing.assert_array_equal(batch["x"]["b"][:, 0, 0, 0], -batch["y"]["b"])
    assert batch["y"]["a"].dtype == np.int32 and batch["y"]["b"].dtype == np.float32
    assert np.all(-batch["y"]["b"] < 12)
    # Two tasks on one source draw different streams; everything is deterministic.
    same = MultiSource({"a": ds, "b": ds})
    streams = [same.batch(s, 4, seed=0)["x"] for s in range(5)]
    assert not all(np.array_equal(s["a"], s["b"]) for s in streams)
    np.testing.assert_array_equal(same.batch(2, 4, seed=0)["x"]["b"], streams[2]["b"])


def test_multisource_errors():
    ds = toy(8)
    with pytest.raises(KeyError, match="'c'"):
        MultiSource({"a": ds, "c": ds})
    with pytest.raises(ValueError):
        MultiSource({})
    with pytest.raises(ValueError, match="batch_size=9 for 8 examples"):
        MultiSource({"a": ds}).batch(0, 9, seed=0)


# --- MultiDigits -----------------------------------------------------------------------------

def test_multidigits_shapes_and_range(small_digits):
    train, test = small_digits
    assert train.x.shape == (500, 12, 12, 1) and test.x.shape == (200, 12, 12, 1)
    assert train.x.dtype == test.x.dtype == np.float32
    assert train.x.min() >= 0.0 and train.x.max() == 1.0
    for ds in small_digits:
        assert sorted(ds.y) == ["left", "right"]
        for labels in ds.y.values():
            assert labels.dtype == np.int32 and set(labels.tolist()) <= set(range(10))


def test_multidigits_matches_an_independent_construction(small_digits):
    digits = load_digits()
    raw, targets = digits.images, digits.target
    for ds, pairs in zip(small_digits, multidigit_pairs(num_train=500, num_test=200, seed=3)):
        np.testing.assert_array_equal(ds.y["left"], targets[pairs[:, 0]])
        np.testing.assert_array_equal(ds.y["right"], targets[pairs[:, 1]])
        for i in (0, 1, 57, len(ds) - 1):
            a, b = raw[pairs[i, 0]] / 16.0, raw[pairs[i, 1]] / 16.0
            expected = np.zeros((12, 12))
            for r in range(12):
                for c in range(12):
                    in_a, in_b = r < 8 and c < 8, r >= 4 and c >= 4
                    if in_a and in_b:
                        expected[r, c] = max(a[r, c], b[r - 4, c - 4])
                    elif in_a:
                        expected[r, c] = a[r, c]
                    elif in_b:
                        expected[r, c] = b[r - 4, c - 4]
            np.testing.assert_allclose(ds.x[i, :, :, 0], expected, rtol=0, atol=1e-7)


def test_multidigits_pools_are_disjoint_and_pairs_stay_in_them():
    train_pool, test_pool = source_pools(test_fraction=0.25, seed=5)
    assert len(np.intersect1d(train_pool, test_pool)) == 0
    assert sorted(np.concatenate([train_pool, test_pool]).tolist()) == list(range(1797))
    assert len(test_pool) == round(0.25 * 1797)
    train_pairs, test_pairs = multidigit_pairs(num_train=3000, num_test=800, test_fraction=0.25,
                                               seed=5)
    assert np.isin(train_pairs, train_pool).all() and np.isin(test_pairs, test_pool).all()
    for pairs in (train_pairs, test_pairs):
        assert np.all(pairs[:, 0] != pairs[:, 1])
    assert len(np.unique(train_pairs)) > 0.8 * len(train_pool)  # drawn across the whole pool


def test_multidigits_determinism():
    a_train, a_test = multidigits(num_train=50, num_test=20, seed=1)
    b_train, b_test = multidigits(num_train=50, num_test=20, seed=1)
    c_train, _ = multidigits(num_train=50, num_test=20, seed=2)
    np.testing.assert_array_equal(a_train.x, b_train.x)
    np.testing.assert_array_equal(a_test.y["left"], b_test.y["left"])
    assert not np.array_equal(a_train.x, c_train.x)
    assert not np.array_equal(source_pools(seed=1)[1], source_pools(seed=2)[1])


def test_multidigits_errors():
    for bad in (0.0, 1.0, 0.0005):
        with pytest.raises(ValueError, match="test_fraction"):
            multidigits(num_train=10, num_test=10, test_fraction=bad)
    with pytest.raises(ValueError, match="num_test"):
        multidigits(num_train=10, num_test=0)


# --- synthetic -------------------------------------------------------------------------------

def test_synthetic_shapes_labels_and_determinism():
    ds = synthetic_images(3, num_examples=512, seed=4)
    assert ds.x.shape == (512, 32, 32, 3) and ds.x.dtype == np.float32
    assert list(ds.y) == ["task0", "task1", "task2"]
    for labels in ds.y.values():
        assert labels.dtype == np.int32
        counts = np.bincount(labels, minlength=10)
        assert len(counts) == 10 and counts.min() > 0  # every class appears
    again = synthetic_images(3, num_examples=512, seed=4)
    np.testing.assert_array_equal(ds.x, again.x)
    np.testing.assert_array_equal(ds.y["task2"], again.y["task2"])
    assert not np.array_equal(ds.x, synthetic_images(3, num_examples=512, seed=5).x)
    # Adding tasks keeps the images and the earlier tasks' labels.
    more = synthetic_images(5, num_examples=512, seed=4)
    np.testing.assert_array_equal(more.y["task1"], ds.y["task1"])


def test_synthetic_relatedness():
    def agreement(r):
        ds = synthetic_images(2, num_examples=1000, image_shape=(8, 8, 3), relatedness=r)
        return np.mean(ds.y["task0"] == ds.y["task1"])

    assert agreement(1.0) == 1.0
    assert agreement(0.0) < agreement(0.5) < agreement(0.9) < 1.0
    assert agreement(0.0) < 0.2  # about chance (0.1) when unrelated


def test_synthetic_tasks_are_learnable():
    ds = synthetic_images(1, num_examples=2048, seed=0)
    features, labels = pooled_features(ds.x), ds.y["task0"]
    model = LogisticRegression(max_iter=300).fit(features[:1536], labels[:1536])
    assert model.score(features[1536:], labels[1536:]) > 0.4  # chance is 0.1


@pytest.mark.parametrize("kwargs,match", [
    ({"num_tasks": 0}, "num_tasks"),
    ({"relatedness": 1.5}, "relatedness"),
    ({"relatedness": -0.1}, "relatedness"),
    ({"num_classes": 1}, "num_classes"),
    ({"num_examples": 0}, "num_examples"),
    ({"image_shape": (30, 32, 3)}, "multiples of 4"),
    ({"image_shape": (32, 32)}, "image_shape"),
])
def test_synthetic_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_images(**{"num_tasks": 2, "num_examples": 16, **kwargs})
