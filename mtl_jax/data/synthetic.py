"""Seeded synthetic image tasks that are learnable and related, for speed work and tests.

Images are standard-normal noise. Each task labels an image by the argmax of a
linear map of its 4x4-average-pooled pixels, ``features @ W_t``, where
``W_t = sqrt(r) W_shared + sqrt(1 - r) W_own_t`` mixes a map shared by all tasks
with the task's own (``r`` is ``relatedness``; every class column is then scaled
to unit norm so that no class dominates). With ``r = 1`` all tasks have the same
labels; with ``r = 0`` they are independent.
"""

from __future__ import annotations

import numpy as np

from mtl_jax.data.dataset import Dataset

POOL = 4


def _check(num_tasks: int, num_examples: int, image_shape: tuple[int, ...], num_classes: int,
           relatedness: float, seed: int) -> None:
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape}")
    if image_shape[0] % POOL or image_shape[1] % POOL:
        raise ValueError(f"image height and width must be multiples of {POOL} (the pooling "
                         f"window), got image_shape={image_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0.0 <= relatedness <= 1.0:
        raise ValueError(f"relatedness must be in [0, 1], got {relatedness}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def pooled_features(x: np.ndarray) -> np.ndarray:
    """``[N, H, W, C]`` images -> ``[N, H/4 * W/4 * C]`` 4x4 average-pooled features.

    Examples:
      >>> pooled_features(np.ones((2, 8, 8, 3))).shape
      (2, 12)
    """
    n, h, w, c = x.shape
    blocks = x.reshape(n, h // POOL, POOL, w // POOL, POOL, c)
    return blocks.mean(axis=(2, 4)).reshape(n, -1)


def synthetic_images(num_tasks: int, *, num_examples: int = 1024,
                     image_shape: tuple[int, int, int] = (32, 32, 3), num_classes: int = 10,
                     relatedness: float = 0.5, seed: int = 0) -> Dataset:
    """``num_tasks`` related classification tasks ``"task0".."task{T-1}"`` on noise images.

    Draws are keyed by purpose (images, shared map, task ``t``'s own map), so adding
    tasks leaves the images and the earlier tasks' labels unchanged.

    Args:
      num_tasks: number of tasks, >= 1.
      num_examples: number of images.
      image_shape: ``(H, W, C)``; ``H`` and ``W`` multiples of 4.
      num_classes: classes per task, >= 2.
      relatedness: in [0, 1], the weight of the shared map in every task's map.
      seed: seeds everything.

    Returns:
      A :class:`Dataset` named ``"Synthetic"`` with float32 images and int32 labels.

    Examples:
      >>> ds = synthetic_images(2, num_examples=8, image_shape=(8, 8, 1), num_classes=3)
      >>> ds.x.shape, sorted(ds.y), ds.y["task0"].dtype
      ((8, 8, 8, 1), ['task0', 'task1'], dtype('int32'))
      >>> same = synthetic_images(3, num_examples=8, image_shape=(8, 8, 1), relatedness=1.0)
      >>> bool((same.y["task0"] == same.y["task2"]).all())
      True
    """
    _check(num_tasks, num_examples, tuple(image_shape), num_classes, relatedness, seed)
    x = np.random.default_rng([seed, 0]).standard_normal((num_examples, *image_shape),
                                                         dtype=np.float32)
    features = pooled_features(x)
    shape = (features.shape[1], num_classes)
    shared = np.random.default_rng([seed, 1]).standard_normal(shape)
    labels = {}
    for t in range(num_tasks):
        own = np.random.default_rng([seed, 2 + t]).standard_normal(shape)
        w = np.sqrt(relatedness) * shared + np.sqrt(1.0 - relatedness) * own
        w /= np.linalg.norm(w, axis=0)
        labels[f"task{t}"] = np.argmax(features @ w, axis=1).astype(np.int32)
    return Dataset(x, labels, "Synthetic")
