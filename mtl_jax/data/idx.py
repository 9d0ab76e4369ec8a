"""The IDX files of MNIST and Fashion-MNIST: read, verify, write; nothing is downloaded.

IDX (LeCun et al., the MNIST database) is a big-endian binary format: two zero
bytes, a type code (``0x08`` unsigned byte, ... ``0x0E`` float64), the number of
dimensions ``d``, ``d`` sizes as 4-byte unsigned integers, then the values in
C order. A dataset directory holds four such files, plain or gzipped::

    train-images-idx3-ubyte[.gz]  uint8 [60000, 28, 28]
    train-labels-idx1-ubyte[.gz]  uint8 [60000]
    t10k-images-idx3-ubyte[.gz]   uint8 [10000, 28, 28]
    t10k-labels-idx1-ubyte[.gz]   uint8 [10000]

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) is read from Debian's package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, gzipped) or any
directory passed as ``data_dir``; MNIST only from a ``data_dir`` (no package ships
it). :func:`load` checks the header of every file, that it holds exactly the
bytes its header announces, 28x28 images, as many labels as images, labels in
0..9 with every class present in each split and, for the installed package,
the full release: 60,000 / 10,000 images, 6,000 / 1,000 per class.
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib
import zlib
from typing import NamedTuple

import numpy as np

DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
"""IDX type code → numpy dtype (big-endian)."""

FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""Split → (images file, labels file), without the optional ``.gz``."""

SIDE = 28
"""Images are ``SIDE x SIDE`` pixels."""
NUM_CLASSES = 10


class Release(NamedTuple):
    """A published dataset in the four-file IDX layout.

    Attributes:
      title: the name used in messages.
      default_dir: where a system package installs it (None: nowhere).
      package: the Debian package that installs it (None: none does).
      sizes: images in the full train and test splits.
      per_class: images per class in the full train and test splits, when balanced.
    """

    title: str
    default_dir: str | None
    package: str | None
    sizes: tuple[int, int] = (60_000, 10_000)
    per_class: tuple[int, int] | None = None


RELEASES: dict[str, Release] = {
    "fashion-mnist": Release("Fashion-MNIST", "/usr/share/datasets/fashion-mnist",
                             "dataset-fashion-mnist", per_class=(6_000, 1_000)),
    "mnist": Release("MNIST", None, None),
}
"""Dataset name → :class:`Release` (the ``name`` argument of :func:`load`)."""


class Split(NamedTuple):
    """One split: ``images`` uint8 ``[N, 28, 28]`` and ``labels`` int32 ``[N]`` (read-only)."""

    images: np.ndarray
    labels: np.ndarray


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    Examples:
      >>> import tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "x-idx1-ubyte.gz"
      >>> write_idx(path, np.arange(5, dtype=np.uint8))
      >>> read_idx(path).tolist()
      [0, 1, 2, 3, 4]
    """
    array = np.asarray(array)
    big = array.dtype.newbyteorder(">")
    codes = {dtype: code for code, dtype in DTYPES.items()}
    if big not in codes or array.ndim > 255:
        raise ValueError(f"IDX cannot hold an array of dtype {array.dtype} and rank {array.ndim}")
    header = bytes([0, 0, codes[big], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(array, big).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gunzipped when it ends in ``.gz``).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: naming ``path``, when its gzip stream is corrupt, its header is not
        IDX (magic number, type code) or it holds more or fewer bytes than announced.

    Examples:
      >>> import tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "x-idx3-ubyte"
      >>> write_idx(path, np.zeros((2, 3, 4), np.uint8))
      >>> read_idx(path).shape
      (2, 3, 4)
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: not a readable gzip file ({error}); the file is corrupt "
                             "or truncated") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}; "
                         f"expected 0000 then a type code in "
                         f"{sorted(f'{c:02x}' for c in DTYPES)} and the rank)")
    dtype, rank = DTYPES[raw[2]], raw[3]
    start = 4 + 4 * rank
    if len(raw) < start:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes; a rank-{rank} header "
                         f"has {start})")
    shape = tuple(int(n) for n in np.frombuffer(raw, ">u4", count=rank, offset=4))
    expected = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: {len(raw):,} bytes, but its header (shape {shape}, "
                         f"{dtype.name}) announces {expected:,}")
    return np.frombuffer(raw, dtype, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


def _release(name: str) -> Release:
    if name not in RELEASES:
        raise ValueError(f"unknown IDX dataset {name!r}; known: {sorted(RELEASES)}")
    return RELEASES[name]


def find_files(name: str = "fashion-mnist",
               data_dir: str | os.PathLike | None = None) -> dict[str, tuple[pathlib.Path, ...]]:
    """The four IDX files of ``name`` in ``data_dir`` (default: the package's directory).

    Cheap: only looks at names, reads nothing. A plain file is preferred to its ``.gz``.

    Returns:
      ``{"train": (images, labels), "test": (images, labels)}`` paths.

    Raises:
      FileNotFoundError: one line naming the directory, the missing files, the
        Debian package that installs the data and the ``--data-dir`` option.

    Examples:
      >>> find_files("mnist")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      FileNotFoundError: MNIST has no default directory (...): pass --data-dir DIR ...
    """
    release = _release(name)
    wanted = [stem for split in FILES.values() for stem in split]
    listing = f"{', '.join(wanted[:-1])} and {wanted[-1]} (each may be .gz)"
    if data_dir is None and release.default_dir is None:
        raise FileNotFoundError(f"{release.title} has no default directory (no Debian package "
                                f"ships it): pass --data-dir DIR (data_dir= in Python), a "
                                f"directory holding {listing}")
    directory = pathlib.Path(release.default_dir if data_dir is None else data_dir)
    found = {stem: next((directory / f for f in (stem, stem + ".gz")
                         if (directory / f).is_file()), None) for stem in wanted}
    missing = [stem for stem, path in found.items() if path is None]
    if missing:
        where = (f"directory {str(directory)!r} does not exist" if not directory.is_dir()
                 else f"{str(directory)!r} lacks {', '.join(missing)} (or .gz)")
        hint = (f"install it with `apt-get install {release.package}` or pass "
                if data_dir is None and release.package else "pass ")
        raise FileNotFoundError(f"{release.title} not found: {where}; {hint}--data-dir DIR "
                                f"(data_dir= in Python), a directory holding {listing}")
    return {split: tuple(found[stem] for stem in stems) for split, stems in FILES.items()}


def _verify(split: str, images: np.ndarray, labels: np.ndarray,
            paths: tuple[pathlib.Path, pathlib.Path], release: Release, full: bool) -> None:
    """Raise a ValueError naming the file when a split is not an MNIST-style split."""
    image_path, label_path = paths
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"{image_path}: expected uint8 images [N, {SIDE}, {SIDE}], got "
                         f"{images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{label_path}: expected uint8 labels [N], got {labels.dtype} "
                         f"{labels.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{label_path}: {len(labels)} labels for the {len(images)} images of "
                         f"{image_path}")
    if labels.max(initial=0) >= NUM_CLASSES:
        raise ValueError(f"{label_path}: labels must be in 0..{NUM_CLASSES - 1}, found "
                         f"{int(labels.max())}")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if not counts.all():
        raise ValueError(f"{label_path}: the {split} split has no image of classes "
                         f"{np.flatnonzero(counts == 0).tolist()}")
    index = list(FILES).index(split)
    if full and len(images) != release.sizes[index]:
        raise ValueError(f"{image_path}: {len(images):,} images; the {release.title} release "
                         f"has {release.sizes[index]:,} in its {split} split")
    if full and release.per_class and not (counts == release.per_class[index]).all():
        raise ValueError(f"{label_path}: per-class counts {counts.tolist()}; the "
                         f"{release.title} release has {release.per_class[index]:,} per class")


@functools.lru_cache(maxsize=4)
def _load(name: str, data_dir: str | None) -> tuple[Split, Split]:
    release = _release(name)
    splits = []
    for split, paths in find_files(name, data_dir).items():
        images, labels = (read_idx(path) for path in paths)
        _verify(split, images, labels, paths, release, full=data_dir is None)
        labels = labels.astype(np.int32)
        images.flags.writeable = labels.flags.writeable = False
        splits.append(Split(images, labels))
    return tuple(splits)


def load(name: str = "fashion-mnist",
         data_dir: str | os.PathLike | None = None) -> tuple[Split, Split]:
    """The verified train and test splits of ``name`` (cached; the arrays are read-only).

    Args:
      name: a key of :data:`RELEASES`: ``"fashion-mnist"`` or ``"mnist"``.
      data_dir: a directory holding the four IDX files (plain or ``.gz``); default:
        the Debian package's directory (Fashion-MNIST only), whose files must then
        be the full release.

    Returns:
      ``(train, test)``, each a :class:`Split`.

    Raises:
      FileNotFoundError: a file is missing (the message names the package and ``--data-dir``).
      ValueError: a file is corrupt or truncated, or not the data expected (named).

    Examples:
      >>> import tempfile
      >>> folder = pathlib.Path(tempfile.mkdtemp())
      >>> for split, n in (("train", 20), ("test", 10)):
      ...     images, labels = FILES[split]
      ...     write_idx(folder / images, np.zeros((n, 28, 28), np.uint8))
      ...     write_idx(folder / f"{labels}.gz", np.arange(n, dtype=np.uint8) % 10)
      >>> train, test = load("mnist", folder)
      >>> train.images.shape, test.labels.tolist()
      ((20, 28, 28), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    return _load(name, None if data_dir is None else str(pathlib.Path(data_dir).resolve()))
