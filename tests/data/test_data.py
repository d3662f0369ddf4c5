import gzip
import hashlib
import re
import shutil
import sys
import types

import numpy as np
import pytest

from jaxoip.data import mnist as data_lib
from jaxoip.data.mnist import DATA_DIR_ENV, MNIST, Standardization, load_idx_dir, load_mnist, resolve_data_dir
from jaxoip.errors import DataError


def test_real_mnist_shapes_and_range(mnist):
    assert mnist.train_images.shape == (60000, 28, 28, 1)
    assert mnist.test_images.shape == (10000, 28, 28, 1)
    assert mnist.train_images.dtype == np.float32 and mnist.train_labels.dtype == np.int32
    assert mnist.train_images.min() == 0 and mnist.train_images.max() == 255
    assert sorted(np.unique(mnist.test_labels)) == list(range(10))
    assert np.bincount(mnist.test_labels)[0] == 980  # Known count of zeros in the test set.


def test_standardization_round_trip(mnist):
    std = Standardization.fit(mnist.train_images)
    assert 33.0 < std.mean < 34.0 and 78.0 < std.std < 79.5
    z = std(mnist.test_images[:10])
    np.testing.assert_allclose(std.to_pixels(z), mnist.test_images[:10], atol=1e-3)


def _write_idx(path, arr, magic, compress=True):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def _fake_dir(tmp_path, n_train=20, n_test=10, compress=True):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), 2051, compress)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, (n_train,)), 2049, compress)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), 2051, compress)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, (n_test,)), 2049, compress)
    return tmp_path


@pytest.mark.parametrize("compress", [True, False])
def test_small_idx_dir_loads(tmp_path, compress):
    d = load_idx_dir(_fake_dir(tmp_path, compress=compress))
    assert isinstance(d, MNIST)
    assert d.train_images.shape == (20, 28, 28, 1) and d.test_labels.shape == (10,)


def test_wrong_magic(tmp_path):
    _fake_dir(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(10), 2051)
    with pytest.raises(DataError, match="magic number 2051"):
        load_idx_dir(tmp_path)


def test_truncated_file(tmp_path):
    _fake_dir(tmp_path, compress=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_idx_dir(tmp_path)


def test_corrupt_gzip(tmp_path):
    _fake_dir(tmp_path)
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:15])
    with pytest.raises(DataError, match="train-labels"):
        load_idx_dir(tmp_path)


def test_count_mismatch(tmp_path):
    _fake_dir(tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19), 2049)
    with pytest.raises(DataError, match="20 images but 19 labels"):
        load_idx_dir(tmp_path)


def test_missing_file(tmp_path):
    _fake_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing MNIST file t10k-images"):
        load_idx_dir(tmp_path)


def test_missing_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nope")


def test_env_variable_is_used(tmp_path, monkeypatch):
    _fake_dir(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir() == str(tmp_path.resolve())
    assert load_mnist().train_images.shape[0] == 20


def test_real_files_uncompressed_match(mnist, tmp_path):
    # The loader reads the same data from plain and gzipped files.
    src = resolve_data_dir()
    for name in data_lib.IDX_FILES.values():
        with gzip.open(f"{src}/{name}.gz") as f, open(tmp_path / name, "wb") as g:
            shutil.copyfileobj(f, g)
    plain = load_idx_dir(tmp_path)
    np.testing.assert_array_equal(plain.test_images, mnist.test_images)
    assert plain.checksum() == mnist.checksum()


def test_checksum_is_hashed_once_per_object(tmp_path, monkeypatch):
    """Training, a resume check and a summary each ask for it: SHA-256 over the pixels and labels, hashed once."""
    d = load_idx_dir(_fake_dir(tmp_path))
    arrays = (d.train_images, d.train_labels, d.test_images, d.test_labels)
    expected = hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()
    calls = []
    monkeypatch.setattr(data_lib, "hashlib", types.SimpleNamespace(sha256=lambda: calls.append(1) or hashlib.sha256()))
    assert d.checksum() == d.checksum() == expected and calls == [1]


class _FakeTfds(types.ModuleType):
    """tensorflow-datasets as jaxoip calls it: `as_numpy(load("mnist", split=..., batch_size=-1, ...))`."""

    def __init__(self, fail=None):
        super().__init__("tensorflow_datasets")
        self.fail, self.calls = fail, []

    def load(self, name, split, batch_size, as_supervised):
        self.calls.append((name, split, batch_size, as_supervised))
        if self.fail:
            raise self.fail
        n = {"train": 30, "test": 12}[split]
        rng = np.random.default_rng(len(split))
        return rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, (n,), dtype=np.int64)

    def as_numpy(self, tree):
        return tree


@pytest.fixture
def no_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    data_lib._load_cached.cache_clear()
    yield
    data_lib._load_cached.cache_clear()


def test_tfds_path_offline(no_data_dir, monkeypatch):
    fake = _FakeTfds()
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    monkeypatch.setattr(data_lib, "_tensorflow_installed", lambda: True)
    d = load_mnist()
    assert d.source == "tensorflow-datasets:mnist"
    assert d.train_images.shape == (30, 28, 28, 1) and d.train_images.dtype == np.float32
    assert d.test_labels.shape == (12,) and d.test_labels.dtype == np.int32
    assert [c[:2] for c in fake.calls] == [("mnist", "train"), ("mnist", "test")]
    assert data_lib.optional_mnist() is d  # Cached: tensorflow-datasets is asked once.


@pytest.mark.parametrize(
    "tfds, tensorflow, message",
    [
        (None, False, "pip install 'jaxoip[tfds]'"),  # tensorflow-datasets not installed
        (_FakeTfds(), False, "needs TensorFlow"),
        (_FakeTfds(fail=ConnectionError("cannot resolve host\nretrying")), True, "ConnectionError: cannot"),
    ],
)
def test_tfds_path_failures_are_one_line(no_data_dir, monkeypatch, tfds, tensorflow, message):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", tfds)  # None makes the import fail.
    monkeypatch.setattr(data_lib, "_tensorflow_installed", lambda: tensorflow)
    with pytest.raises(DataError, match=re.escape(message)) as e:
        load_mnist()
    assert "\n" not in str(e.value) and "--data-dir" in str(e.value) and DATA_DIR_ENV in str(e.value)
    assert data_lib.optional_mnist() is None


def test_optional_mnist_raises_for_a_named_folder(no_data_dir, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data_lib.optional_mnist(tmp_path / "nope")
    assert data_lib.optional_mnist(_fake_dir(tmp_path)).train_images.shape[0] == 20


def test_the_checksum_of_arrays_that_can_change_follows_them():
    from jaxoip.data.mnist import MNIST

    x, y = np.zeros((3, 28, 28, 1), np.float32), np.zeros(3, np.int32)
    data = MNIST(x, y, x.copy(), y.copy(), source="arrays")
    before = data.checksum()
    data.test_images[0, 0, 0, 0] = 1.0
    assert data.checksum() != before


def test_files_read_ahead_are_used_only_while_unchanged(tmp_path, monkeypatch):
    """`idx.prefetch` reads the files on a thread; the loader takes those arrays (no second read) unless the file
    changed since, and a damaged file read ahead is reported by the loader in its usual words."""
    import os

    from jaxoip.data import idx

    _fake_dir(tmp_path)
    reads = []
    real = idx.read_idx_bytes
    monkeypatch.setattr(idx, "read_idx_bytes", lambda p: reads.append(p.name) or real(p))
    idx.prefetch(tmp_path)
    first = load_idx_dir(tmp_path)
    assert sorted(reads) == sorted(f"{s}.gz" for s in data_lib.IDX_FILES.values())  # Each file read once.
    # The checksum was computed on the thread too, and is MNIST.checksum's.
    direct = hashlib.sha256()
    for a in (first.train_images, first.train_labels, first.test_images, first.test_labels):
        direct.update(np.ascontiguousarray(a).tobytes())
    assert first.__dict__.get("_checksum") == direct.hexdigest() == first.checksum()

    reads.clear()
    idx.prefetch(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    idx.load_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 3)  # Waits for the thread's reads.
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(20, 7), 2049)  # Changed after it was read ahead.
    os.utime(labels, ns=(1, 1))
    again = load_idx_dir(tmp_path)
    assert reads.count("train-labels-idx1-ubyte.gz") == 2 and (again.train_labels == 7).all()
    assert "_checksum" not in again.__dict__ and again.checksum() != first.checksum()  # Not the stale one.
    assert (first.train_labels != 7).any()

    labels.write_bytes(labels.read_bytes()[:15])
    idx.prefetch(tmp_path)
    with pytest.raises(DataError, match="cannot read .*train-labels"):
        load_idx_dir(tmp_path)
