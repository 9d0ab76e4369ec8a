"""MultiFashion and MultiMNIST: two 28x28 images overlapping, one task per image.

The recipe of Sener & Koltun, "Multi-Task Learning as Multi-Objective
Optimization" (NeurIPS 2018), itself after Sabour, Frosst & Hinton (NeurIPS
2017): image A is put at the top-left of a 36x36 canvas (rows and columns
0..27), image B at the bottom-right (rows and columns 8..35); where they
overlap the pixel is the maximum of the two; the canvas is resized to 28x28.
Task ``"left"`` is A's class, task ``"right"`` B's. MultiFashion (Lin et al.,
"Pareto Multi-Task Learning", NeurIPS 2019) applies it to Fashion-MNIST.

Choices, where the papers leave room:

* Resizing is **area averaging** (an exact box filter: each output pixel is the
  mean of the 36/28 x 36/28 input square it covers, as OpenCV's ``INTER_AREA``
  and PIL's ``BOX``), computed as ``R @ canvas @ R.T`` with the ``[28, 36]``
  matrix of :func:`area_weights`. Sener & Koltun's code resizes by nearest
  neighbour and puts B at 6..33; the corner offset here is the canvas' true
  bottom-right, 36 - 28 = 8.
* Pairing: as in their code, the top-left images run through a permutation of
  the split (every image once per 60,000 train pairs), each with a uniformly
  drawn other image of the same split at the bottom-right; seeded by ``seed``.
  Test pairs are drawn from the test split only.
* Pixels are float32 in [0, 1] (the uint8 values / 255), images NHWC ``[N, 28, 28, 1]``.
"""

from __future__ import annotations

import functools
import os
import pathlib

import numpy as np

from mtl_jax.data import idx
from mtl_jax.data.dataset import Dataset

SIDE = idx.SIDE
"""Source and output images are ``SIDE x SIDE`` (28)."""
CANVAS = 36
"""The canvas the two images are placed on is ``CANVAS x CANVAS``."""
OFFSET = CANVAS - SIDE
"""The bottom-right image starts at row and column ``OFFSET`` (8)."""
CHUNK = 8192
"""Pairs composed at a time (bounds the float32 canvases in memory)."""

TITLES = {"fashion-mnist": "MultiFashion", "mnist": "MultiMNIST"}


def compose(top_left: np.ndarray, bottom_right: np.ndarray) -> np.ndarray:
    """``[N, 28, 28]`` images on ``[N, 36, 36]`` canvases, maximum where they overlap.

    Examples:
      >>> canvas = compose(np.ones((1, 28, 28)), np.full((1, 28, 28), 0.5))
      >>> canvas.shape, canvas[0, [0, 8, 30, 0], [0, 8, 30, 35]].tolist()
      ((1, 36, 36), [1.0, 1.0, 0.5, 0.0])
    """
    canvas = np.zeros((len(top_left), CANVAS, CANVAS), np.result_type(top_left, np.float32))
    canvas[:, :SIDE, :SIDE] = top_left
    corner = canvas[:, OFFSET:, OFFSET:]
    np.maximum(corner, bottom_right, out=corner)
    return canvas


def area_weights(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` weights of area (box-filter) resampling along one axis.

    Row ``i`` holds the overlap of input pixel ``j`` (the interval ``[j, j + 1)``)
    with output pixel ``i``'s footprint ``[i s, (i + 1) s)``, ``s = size_in /
    size_out``, divided by ``s``: every row sums to 1.

    Examples:
      >>> area_weights(4, 2).tolist()
      [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
      >>> bool(np.allclose(area_weights(36, 28).sum(1), 1))
      True
    """
    scale = size_in / size_out
    edges = np.arange(size_out + 1) * scale
    left, right = edges[:-1, None], edges[1:, None]
    pixels = np.arange(size_in)[None]
    overlap = np.clip(np.minimum(right, pixels + 1) - np.maximum(left, pixels), 0, None)
    return overlap / scale


def resize_area(images: np.ndarray, size: int = SIDE) -> np.ndarray:
    """Area-resample square ``[N, H, H]`` images to ``[N, size, size]`` (see :func:`area_weights`).

    Examples:
      >>> resize_area(np.arange(16.0).reshape(1, 4, 4), 2)[0].tolist()
      [[2.5, 4.5], [10.5, 12.5]]
    """
    weights = area_weights(images.shape[-1], size).astype(images.dtype)
    return weights @ images @ weights.T


def pair_indices(size: int, num: int, rng: np.random.Generator) -> np.ndarray:
    """``num`` ordered pairs of distinct indices in ``range(size)``.

    Column 0 (top-left) runs through fresh permutations of ``range(size)``, so
    every index appears ``num // size`` or one more times; column 1 is uniform
    over the other ``size - 1`` indices.

    Examples:
      >>> pairs = pair_indices(5, 10, np.random.default_rng(0))
      >>> sorted(pairs[:5, 0].tolist()), bool((pairs[:, 0] != pairs[:, 1]).all())
      ([0, 1, 2, 3, 4], True)
    """
    if size < 2:
        raise ValueError(f"pairs of distinct images need at least 2 images, got {size}")
    first = np.concatenate([rng.permutation(size) for _ in range(-(-num // size))])[:num]
    second = (first + rng.integers(1, size, size=num)) % size
    return np.stack([first, second], axis=1)


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_sizes(num_train: int, num_test: int, seed: int) -> None:
    for name, num in (("num_train", num_train), ("num_test", num_test)):
        if not _is_int(num) or num < 1:
            raise ValueError(f"{name} must be a positive number of pairs, got {num!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def multimnist_pairs(train_size: int, test_size: int, *, num_train: int, num_test: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The source indices of every train and test pair: ``([num_train, 2], [num_test, 2])``.

    Train pairs index the train split (of ``train_size`` images), test pairs the
    test split; column 0 is the top-left image.

    Examples:
      >>> train, test = multimnist_pairs(40, 20, num_train=6, num_test=4, seed=0)
      >>> train.shape, test.shape, int(test.max()) < 20
      ((6, 2), (4, 2), True)
    """
    _check_sizes(num_train, num_test, seed)
    return (pair_indices(train_size, num_train, np.random.default_rng([seed, 1])),
            pair_indices(test_size, num_test, np.random.default_rng([seed, 2])))


def overlay_pairs(images: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The 28x28x1 float32 image of each pair of uint8 ``images [M, 28, 28]``.

    Examples:
      >>> images = np.zeros((2, 28, 28), np.uint8)
      >>> images[1] = 255
      >>> x = overlay_pairs(images, np.array([[1, 0], [0, 1]]))
      >>> x.shape, float(x[0, 0, 0, 0]), float(x[0, -1, -1, 0]), float(x[1, -1, -1, 0])
      ((2, 28, 28, 1), 1.0, 0.0, 1.0)
    """
    out = np.empty((len(pairs), SIDE, SIDE, 1), np.float32)
    for start in range(0, len(pairs), CHUNK):
        chunk = pairs[start:start + CHUNK]
        canvas = compose(images[chunk[:, 0]].astype(np.float32) / 255,
                         images[chunk[:, 1]].astype(np.float32) / 255)
        out[start:start + CHUNK, ..., 0] = resize_area(canvas)
    return out


def _dataset(split: idx.Split, pairs: np.ndarray, title: str) -> Dataset:
    x = overlay_pairs(split.images, pairs)
    y = {"left": split.labels[pairs[:, 0]], "right": split.labels[pairs[:, 1]]}
    for array in (x, *y.values()):
        array.flags.writeable = False
    return Dataset(x, y, title)


@functools.lru_cache(maxsize=2)
def _build(name: str, data_dir: str | None, num_train: int, num_test: int,
           seed: int) -> tuple[Dataset, Dataset]:
    train, test = idx.load(name, data_dir)
    train_pairs, test_pairs = multimnist_pairs(len(train.labels), len(test.labels),
                                               num_train=num_train, num_test=num_test,
                                               seed=seed)
    return (_dataset(train, train_pairs, TITLES[name]),
            _dataset(test, test_pairs, TITLES[name]))


def multi_images(name: str, *, data_dir: str | os.PathLike | None = None,
                 num_train: int = 60_000, num_test: int = 10_000,
                 seed: int = 0) -> tuple[Dataset, Dataset]:
    """MultiMNIST-style train and test sets of the IDX dataset ``name`` (cached, read-only).

    Args:
      name: ``"fashion-mnist"`` or ``"mnist"`` (see :data:`mtl_jax.data.idx.RELEASES`).
      data_dir: the directory of its four IDX files (default: the Debian package's).
      num_train: training pairs, from the train split.
      num_test: test pairs, from the test split.
      seed: seeds the pairing.

    Returns:
      ``(train, test)``: images ``[N, 28, 28, 1]`` float32 in [0, 1], int32 labels
      ``"left"`` (the top-left image's class) and ``"right"`` (the bottom-right's).
    """
    if name not in TITLES:
        raise ValueError(f"unknown IDX dataset {name!r}; known: {sorted(TITLES)}")
    _check_sizes(num_train, num_test, seed)
    directory = None if data_dir is None else str(pathlib.Path(data_dir).resolve())
    return _build(name, directory, int(num_train), int(num_test), int(seed))


def multifashion(*, data_dir: str | os.PathLike | None = None, num_train: int = 60_000,
                 num_test: int = 10_000, seed: int = 0) -> tuple[Dataset, Dataset]:
    """MultiFashion: pairs of Fashion-MNIST images, tasks ``"left"`` and ``"right"``.

    Reads ``/usr/share/datasets/fashion-mnist`` (``apt-get install
    dataset-fashion-mnist``) or ``data_dir``; see :func:`multi_images`.

    Examples:
      >>> import pathlib, tempfile
      >>> from mtl_jax.data.idx import FILES, write_idx
      >>> folder = pathlib.Path(tempfile.mkdtemp())
      >>> for split, n in (("train", 20), ("test", 10)):
      ...     write_idx(folder / FILES[split][0], np.zeros((n, 28, 28), np.uint8))
      ...     write_idx(folder / FILES[split][1], np.arange(n, dtype=np.uint8) % 10)
      >>> train, test = multifashion(data_dir=folder, num_train=50, num_test=8)
      >>> train.x.shape, test.x.shape, sorted(train.y)
      ((50, 28, 28, 1), (8, 28, 28, 1), ['left', 'right'])
    """
    return multi_images("fashion-mnist", data_dir=data_dir, num_train=num_train,
                        num_test=num_test, seed=seed)


def multimnist(*, data_dir: str | os.PathLike, num_train: int = 60_000, num_test: int = 10_000,
               seed: int = 0) -> tuple[Dataset, Dataset]:
    """MultiMNIST: pairs of MNIST digits from the IDX files in ``data_dir``.

    No package ships MNIST and nothing is downloaded; see :func:`multi_images`.

    Examples:
      >>> multimnist(data_dir="/nonexistent")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      FileNotFoundError: MNIST not found: directory '/nonexistent' does not exist; ...
    """
    return multi_images("mnist", data_dir=data_dir, num_train=num_train, num_test=num_test,
                        seed=seed)
