"""MultiFashion / MultiMNIST on IDX files, the MultiLeNet, and `reproduce multifashion`.

Everything runs on small IDX files written here byte by byte (40 train and 20
test images of random pixels), so no test needs the Debian data set.
"""

import gzip
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import cli
from mtl_jax.data import idx, multifashion, multimnist
from mtl_jax.data.multimnist import _build, multimnist_pairs, resize_area
from mtl_jax.models import HardSharing, MultiLeNet, MultiLeNetHeads

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SIZES = {"train": 40, "test": 20}


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """The IDX encoding of ``array``, written from the format's definition."""
    big = array.astype(array.dtype.newbyteorder(">"))
    return (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + big.tobytes())


def source_images(rng: np.random.Generator) -> dict:
    """Per split: uint8 noise images and labels with every class present, shuffled."""
    data = {}
    for split, n in SIZES.items():
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        data[split] = (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), labels)
    return data


def write_dir(folder, data, gz_labels=True):
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in data.items():
        image_name, label_name = NAMES[split]
        (folder / image_name).write_bytes(idx_bytes(images))
        label_path = folder / (label_name + (".gz" if gz_labels else ""))
        label_path.write_bytes(gzip.compress(idx_bytes(labels)) if gz_labels
                               else idx_bytes(labels))
    return folder


@pytest.fixture(scope="module")
def source():
    return source_images(np.random.default_rng(7))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, source):
    return write_dir(tmp_path_factory.mktemp("fashion"), source)


# --- the IDX format ------------------------------------------------------------------------

def test_read_idx_parses_the_header_and_payload(tmp_path):
    cube = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(cube))
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "a"), cube)
    ints = np.array([-5, 0, 70000], np.int32)  # type code 0x0C: big-endian int32
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(ints, 0x0C)))
    got = idx.read_idx(tmp_path / "b.gz")
    assert got.dtype == np.int32 and got.tolist() == [-5, 0, 70000]
    idx.write_idx(tmp_path / "c.gz", cube)  # the writer agrees with the bytes above
    assert gzip.decompress((tmp_path / "c.gz").read_bytes()) == idx_bytes(cube)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"\x08\x03" + raw[2:], "not an IDX file"),         # bad magic
    (lambda raw: raw[:2] + b"\x07" + raw[3:], "not an IDX file"),   # unknown type code
    (lambda raw: raw[:-10], "truncated"),
    (lambda raw: raw[:10], "truncated IDX header"),
    (lambda raw: raw + b"\0", "trailing bytes"),
])
def test_corrupt_files_name_the_file(tmp_path, damage, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(idx_bytes(np.zeros((2, 28, 28), np.uint8))))
    with pytest.raises(ValueError, match=message) as error:
        idx.read_idx(path)
    assert str(path) in str(error.value)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-12])
    with pytest.raises(ValueError, match="corrupt or truncated") as error:
        idx.read_idx(path)
    assert str(path) in str(error.value)


def test_missing_files_name_the_package_and_the_option(tmp_path, monkeypatch, source):
    folder = write_dir(tmp_path / "partial", source)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="lacks t10k-labels-idx1-ubyte") as error:
        idx.load("fashion-mnist", folder)
    assert "--data-dir" in str(error.value) and "\n" not in str(error.value)
    release = idx.RELEASES["fashion-mnist"]
    monkeypatch.setitem(idx.RELEASES, "fashion-mnist",
                        release._replace(default_dir=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        idx.load("fashion-mnist")
    with pytest.raises(FileNotFoundError, match="MNIST has no default directory"):
        multimnist(data_dir=None)


def test_load_verifies_the_data(tmp_path, monkeypatch, source):
    train, test = idx.load("fashion-mnist", write_dir(tmp_path / "ok", source, gz_labels=False))
    np.testing.assert_array_equal(train.images, source["train"][0])
    assert test.labels.dtype == np.int32 and test.labels.tolist() == source["test"][1].tolist()
    assert not train.images.flags.writeable
    bad = {"train": source["train"],
           "test": (source["test"][0], np.where(source["test"][1] == 3, 11, source["test"][1]))}
    with pytest.raises(ValueError, match=r"t10k-labels.*labels must be in 0\.\.9"):
        idx.load("mnist", write_dir(tmp_path / "range", bad))
    bad["test"] = (source["test"][0], np.where(source["test"][1] == 3, 4, source["test"][1]))
    with pytest.raises(ValueError, match=r"no image of classes \[3\]"):
        idx.load("mnist", write_dir(tmp_path / "class", bad))
    bad["test"] = (source["test"][0][:5], source["test"][1])
    with pytest.raises(ValueError, match="20 labels for the 5 images"):
        idx.load("mnist", write_dir(tmp_path / "count", bad))
    # The installed package must hold the full release: 60,000 / 10,000, 6,000 / 1,000 per class.
    release = idx.RELEASES["fashion-mnist"]
    monkeypatch.setitem(idx.RELEASES, "fashion-mnist",
                        release._replace(default_dir=str(tmp_path / "ok")))
    with pytest.raises(ValueError, match="40 images; the Fashion-MNIST release has 60,000"):
        idx.load("fashion-mnist")


# --- the MultiMNIST recipe -----------------------------------------------------------------

def reference(top_left: np.ndarray, bottom_right: np.ndarray) -> np.ndarray:
    """The recipe in float64: 36x36 canvas, max on the overlap, area resize to 28x28.

    Area resampling by 36 -> 28 = 9/7 along each axis: repeat every pixel 7 times
    (252), average blocks of 9.
    """
    canvas = np.zeros((len(top_left), 36, 36))
    canvas[:, :28, :28] = top_left / 255.0
    canvas[:, 8:, 8:] = np.maximum(canvas[:, 8:, 8:], bottom_right / 255.0)
    rows = canvas.repeat(7, axis=1).reshape(-1, 28, 9, 36).mean(axis=2)
    return rows.repeat(7, axis=2).reshape(-1, 28, 28, 9).mean(axis=3)


def test_area_resize_matches_the_block_average_reference():
    canvas = np.random.default_rng(0).uniform(size=(3, 36, 36))  # 2-D block average, float64
    blocks = canvas.repeat(7, 1).repeat(7, 2).reshape(3, 28, 9, 28, 9).mean(axis=(2, 4))
    np.testing.assert_allclose(resize_area(canvas), blocks, rtol=1e-12)
    a, b = (np.random.default_rng(1).integers(0, 256, (2, 28, 28)) for _ in range(2))
    canvas = np.zeros((2, 36, 36))
    canvas[:, :28, :28] = a / 255
    canvas[:, 8:, 8:] = np.maximum(canvas[:, 8:, 8:], b / 255)
    np.testing.assert_allclose(reference(a, b), canvas.repeat(7, 1).repeat(7, 2)
                               .reshape(2, 28, 9, 28, 9).mean(axis=(2, 4)), rtol=1e-12)


def test_pairs_come_from_their_own_split_and_are_seeded():
    train, test = multimnist_pairs(40, 20, num_train=100, num_test=50, seed=0)
    assert train.shape == (100, 2) and test.shape == (50, 2)
    assert train.max() < 40 and test.max() < 20 and train.min() >= 0 and test.min() >= 0
    assert (train[:, 0] != train[:, 1]).all() and (test[:, 0] != test[:, 1]).all()
    assert sorted(train[:40, 0].tolist()) == list(range(40))  # every image once on the left
    again = multimnist_pairs(40, 20, num_train=100, num_test=50, seed=0)
    other = multimnist_pairs(40, 20, num_train=100, num_test=50, seed=1)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(test, again[1])
    assert not np.array_equal(train, other[0]) and not np.array_equal(test, other[1])
    with pytest.raises(ValueError, match="num_test must be a positive number of pairs"):
        multimnist_pairs(40, 20, num_train=1, num_test=0)


def test_each_image_is_its_pair_with_left_and_right_labels(data_dir, source):
    """Identify every composed image among all ordered pairs of all 60 source images."""
    train, test = multifashion(data_dir=data_dir, num_train=120, num_test=60, seed=3)
    images = np.concatenate([source["train"][0], source["test"][0]])
    labels = np.concatenate([source["train"][1], source["test"][1]])
    a, b = np.nonzero(~np.eye(len(images), dtype=bool))           # every ordered pair
    candidates = np.concatenate([reference(images[a[i:i + 500]], images[b[i:i + 500]])
                                 for i in range(0, len(a), 500)]).reshape(len(a), -1)
    for ds, split_range in ((train, range(0, 40)), (test, range(40, 60))):
        assert ds.x.shape[1:] == (28, 28, 1) and ds.x.dtype == np.float32
        assert ds.y["left"].dtype == ds.y["right"].dtype == np.int32
        flat = ds.x.reshape(len(ds), -1).astype(np.float64)
        distances = (flat ** 2).sum(1)[:, None] - 2 * flat @ candidates.T + (candidates ** 2).sum(1)
        best = distances.argmin(1)
        np.testing.assert_allclose(flat, candidates[best], rtol=0, atol=1e-6)
        assert all(a[k] in split_range and b[k] in split_range for k in best)
        np.testing.assert_array_equal(ds.y["left"], labels[a[best]])
        np.testing.assert_array_equal(ds.y["right"], labels[b[best]])


def test_datasets_are_cached_and_seeded(data_dir):
    first = multifashion(data_dir=data_dir, num_train=50, num_test=10, seed=0)
    assert multifashion(data_dir=data_dir, num_train=50, num_test=10, seed=0) is first
    _build.cache_clear()
    rebuilt = multifashion(data_dir=data_dir, num_train=50, num_test=10, seed=0)
    other = multifashion(data_dir=data_dir, num_train=50, num_test=10, seed=1)
    np.testing.assert_array_equal(rebuilt[0].x, first[0].x)
    np.testing.assert_array_equal(rebuilt[1].y["right"], first[1].y["right"])
    assert not np.array_equal(other[0].x, first[0].x)
    assert first[0].name == "MultiFashion" and not first[0].x.flags.writeable
    assert multimnist(data_dir=data_dir, num_train=5, num_test=5)[0].name == "MultiMNIST"


# --- the MultiLeNet ------------------------------------------------------------------------

def lenet_reference(params, x):
    """Sener & Koltun's MultiLeNetR in float64 numpy: valid 5x5 convs, 2x2 max-pools, ReLUs."""
    def conv(x, layer):
        windows = np.lib.stride_tricks.sliding_window_view(x, (5, 5), axis=(1, 2))
        return np.einsum("nhwcij,ijco->nhwo", windows, layer["kernel"]) + layer["bias"]

    def pool(x):
        n, h, w, c = x.shape
        return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params["params"])
    x = np.maximum(pool(conv(x, p["Conv_0"])), 0)
    x = np.maximum(pool(conv(x, p["Conv_1"])), 0)
    return np.maximum(x.reshape(len(x), -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)


def test_lenet_matches_the_paper_layers():
    model = HardSharing(MultiLeNet(), MultiLeNetHeads(("left", "right"), 10))
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    params = jax.jit(model.init)(jax.random.key(0), x)
    shapes = jax.tree.map(jnp.shape, params["params"])
    assert shapes["trunk"] == {"Conv_0": {"kernel": (5, 5, 1, 10), "bias": (10,)},
                               "Conv_1": {"kernel": (5, 5, 10, 20), "bias": (20,)},
                               "Dense_0": {"kernel": (320, 50), "bias": (50,)}}
    assert shapes["heads"] == {"hidden": {"kernel": (2, 50, 50), "bias": (2, 50)},
                               "output": {"kernel": (2, 50, 10), "bias": (2, 10)}}
    trunk_size = (25 * 10 + 10) + (25 * 10 * 20 + 20) + (320 * 50 + 50)
    head_size = (50 * 50 + 50) + (50 * 10 + 10)
    assert sum(v.size for v in jax.tree.leaves(params)) == trunk_size + 2 * head_size == 27450
    apply = jax.jit(model.apply, static_argnames="task")
    out = apply(params, x)
    assert {k: v.shape for k, v in out.items()} == {"left": (3, 10), "right": (3, 10)}
    trunk_params = {"params": params["params"]["trunk"]}
    z = lenet_reference(trunk_params, x.astype(np.float64))
    np.testing.assert_allclose(jax.jit(MultiLeNet().apply)(trunk_params, x), z, rtol=1e-4,
                               atol=1e-5)
    heads = jax.tree.map(lambda v: np.asarray(v, np.float64), params["params"]["heads"])
    hidden = np.maximum(z @ heads["hidden"]["kernel"][1] + heads["hidden"]["bias"][1], 0)
    right = hidden @ heads["output"]["kernel"][1] + heads["output"]["bias"][1]
    np.testing.assert_allclose(out["right"], right, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(apply(params, x, task="right"), right, rtol=1e-4, atol=1e-5)


# --- the command line ----------------------------------------------------------------------

def test_train_refuses_a_missing_data_dir_before_any_work(tmp_path, capsys):
    for args, message in (
            (["--dataset", "multifashion", "--data-dir", str(tmp_path / "none")],
             "does not exist"),
            (["--dataset", "multimnist"], "MNIST has no default directory"),
            (["--dataset", "multidigits", "--data-dir", str(tmp_path)], "data_dir is for")):
        out = tmp_path / "run"
        assert cli.main(["train", "--trunk", "lenet", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not out.exists()


def test_reproduce_in_miniature_writes_its_files(tmp_path, data_dir, capsys):
    out = tmp_path / "mf"
    args = ["reproduce", "multifashion", "--methods", "mgda_ub", "--seeds", "2", "--steps", "3",
            "--batch-size", "8", "--train-pairs", "64", "--test-pairs", "16", "--data-dir",
            str(data_dir), "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "| EW |" in printed and "| MGDA-UB |" in printed and "| single-task |" in printed
    for name in ("multifashion.json", "multifashion.md", "multifashion.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "multifashion.json").read_text())
    assert list(summary["methods"]) == ["ew", "mgda_ub"]  # EW always: it holds the baselines
    assert summary["setup"]["steps"] == 3 and summary["setup"]["num_train"] == 64
    assert len(summary["baselines"]) == 2
    base = {t: np.mean([b[t] for b in summary["baselines"]]) for t in ("left", "right")}
    for result in summary["methods"].values():
        assert len(result["runs"]) == 2
        assert all(0 <= r[t] <= 100 for r in result["runs"] for t in base)
        expected = [np.mean([-(r[t] - base[t]) / base[t] * 100 for t in base])
                    for r in result["runs"]]
        np.testing.assert_allclose(result["delta_m"], expected, rtol=1e-9)
    assert cli.main(args) == 2  # an existing output is never overwritten
    assert "not empty" in capsys.readouterr().err
    assert cli.main([*args[:-1], str(tmp_path / "x"), "--methods", "nope"]) == 2
    assert "'nope'" in capsys.readouterr().err and not (tmp_path / "x").exists()
