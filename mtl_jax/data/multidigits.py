"""MultiDigits: two overlapping 8x8 digits per image, one task per digit.

A small, download-free analogue of the MultiMNIST benchmark of Sener & Koltun,
"Multi-Task Learning as Multi-Objective Optimization" (NeurIPS 2018), built from
scikit-learn's bundled digits (1797 images of 8x8 pixels, values 0..16). Digit A
is put at the top-left of a 12x12 canvas (rows/columns 0..7), digit B at the
bottom-right (rows/columns 4..11); where they overlap the pixel is the maximum
of the two. Task ``"left"`` is A's class and task ``"right"`` is B's.

The source images are split into a train pool and a test pool before any pair
is drawn, so no source image of the test set appears in training.
"""

from __future__ import annotations

import functools

import numpy as np
from sklearn.datasets import load_digits

from mtl_jax.data.dataset import Dataset

DIGIT = 8
OFFSET = 4
CANVAS = DIGIT + OFFSET


@functools.lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images ``[1797, 8, 8]`` in [0, 1] float32, classes int32.

    The arrays are read-only (they are cached).

    Examples:
      >>> images, classes = source_digits()
      >>> images.shape, float(images.max()), classes[:3].tolist()
      ((1797, 8, 8), 1.0, [0, 1, 2])
    """
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    classes = digits.target.astype(np.int32)
    images.flags.writeable = classes.flags.writeable = False
    return images, classes


def source_pools(*, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train and test pools of source-image indices (a seeded split).

    Examples:
      >>> train, test = source_pools(test_fraction=0.2, seed=0)
      >>> len(train), len(test), len(np.intersect1d(train, test))
      (1438, 359, 0)
    """
    total = len(source_digits()[1])
    num_test = int(round(test_fraction * total))
    if not 0 < test_fraction < 1 or not 2 <= num_test <= total - 2:
        raise ValueError(f"test_fraction must leave at least 2 of the {total} source digits in "
                         f"each pool, got test_fraction={test_fraction}")
    order = np.random.default_rng([seed, 0]).permutation(total)
    return np.sort(order[num_test:]), np.sort(order[:num_test])


def sample_pairs(pool: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` ordered pairs of distinct entries of ``pool``, uniformly at random.

    Returns:
      ``[num, 2]`` values of ``pool``: column 0 is the top-left digit, 1 the bottom-right.

    Examples:
      >>> pairs = sample_pairs(np.array([3, 5]), 4, np.random.default_rng(0))
      >>> sorted({tuple(p) for p in pairs.tolist()}) <= [(3, 5), (5, 3)]
      True
    """
    first = rng.integers(len(pool), size=num)
    second = (first + rng.integers(1, len(pool), size=num)) % len(pool)
    return np.stack([pool[first], pool[second]], axis=1)


def overlay(top_left: np.ndarray, bottom_right: np.ndarray) -> np.ndarray:
    """Put ``[N, 8, 8]`` digits on ``[N, 12, 12, 1]`` canvases, overlapping by the max.

    Examples:
      >>> canvas = overlay(np.ones((1, 8, 8)), np.full((1, 8, 8), 0.5))
      >>> canvas.shape, canvas[0, [0, 5, 11], [0, 5, 11], 0].tolist()
      ((1, 12, 12, 1), [1.0, 1.0, 0.5])
    """
    canvas = np.zeros((len(top_left), CANVAS, CANVAS), np.float32)
    canvas[:, :DIGIT, :DIGIT] = top_left
    corner = canvas[:, OFFSET:, OFFSET:]
    np.maximum(corner, bottom_right, out=corner)
    return canvas[..., None]


def multidigit_pairs(*, num_train: int = 10000, num_test: int = 2000,
                     test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The source-image indices of every pair of :func:`multidigits`.

    Returns:
      ``(train_pairs [num_train, 2], test_pairs [num_test, 2])``: indices into
      :func:`source_digits`, drawn from the train and the test pool of
      :func:`source_pools` respectively.

    Examples:
      >>> train, test = multidigit_pairs(num_train=3, num_test=2)
      >>> train.shape, test.shape
      ((3, 2), (2, 2))
    """
    for name, num in (("num_train", num_train), ("num_test", num_test)):
        if num < 1:
            raise ValueError(f"{name} must be >= 1, got {num}")
    train_pool, test_pool = source_pools(test_fraction=test_fraction, seed=seed)
    return (sample_pairs(train_pool, num_train, np.random.default_rng([seed, 1])),
            sample_pairs(test_pool, num_test, np.random.default_rng([seed, 2])))


def _build(pairs: np.ndarray) -> Dataset:
    images, classes = source_digits()
    x = overlay(images[pairs[:, 0]], images[pairs[:, 1]])
    return Dataset(x, {"left": classes[pairs[:, 0]], "right": classes[pairs[:, 1]]},
                   "MultiDigits")


def multidigits(*, num_train: int = 10000, num_test: int = 2000, test_fraction: float = 0.2,
                seed: int = 0) -> tuple[Dataset, Dataset]:
    """The MultiDigits train and test sets (deterministic given ``seed``).

    Args:
      num_train: number of training pairs.
      num_test: number of test pairs.
      test_fraction: share of the 1797 source digits reserved for test pairs.
      seed: seeds the source split and the pair sampling.

    Returns:
      ``(train, test)``, each with images ``[N, 12, 12, 1]`` float32 in [0, 1] and
      int32 labels ``"left"`` and ``"right"``.

    Examples:
      >>> train, test = multidigits(num_train=100, num_test=20)
      >>> train.x.shape, test.x.shape, sorted(train.y)
      ((100, 12, 12, 1), (20, 12, 12, 1), ['left', 'right'])
    """
    train_pairs, test_pairs = multidigit_pairs(num_train=num_train, num_test=num_test,
                                               test_fraction=test_fraction, seed=seed)
    return _build(train_pairs), _build(test_pairs)
