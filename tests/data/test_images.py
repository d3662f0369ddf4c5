"""`load_images`: every format from a small generated file, and one line naming the file for malformed ones."""

import pickle

import numpy as np
import pytest
from PIL import Image

from jaxoip.data.images import load_images
from jaxoip.errors import DataError
from tests.data.test_data import _fake_dir

RNG = np.random.default_rng(0)


def _npz(path, shape=(8, 8, 3), n=(12, 5), **overrides):
    arrays = {
        "x_train": RNG.integers(0, 256, (n[0], *shape), dtype=np.uint8),
        "y_train": RNG.integers(0, 10, (n[0], 1)),
        "x_test": RNG.integers(0, 256, (n[1], *shape), dtype=np.uint8),
        "y_test": RNG.integers(0, 10, (n[1],)),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_idx_folder_is_mnist_like(tmp_path):
    data = load_images(_fake_dir(tmp_path, compress=False))
    assert data.train_images.shape[1:] == (28, 28, 1) and data.train_images.dtype == np.float32


def test_keras_npz_colour_and_grayscale(tmp_path):
    arrays = _npz(tmp_path / "c.npz")
    data = load_images(tmp_path / "c.npz")
    assert data.train_images.shape == (12, 8, 8, 3) and data.test_images.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(data.train_images, arrays["x_train"].astype(np.float32))
    np.testing.assert_array_equal(data.train_labels, arrays["y_train"][:, 0])
    assert not data.train_images.flags.writeable
    _npz(tmp_path / "g.npz", shape=(10, 12))
    assert load_images(tmp_path / "g.npz").test_images.shape == (5, 10, 12, 1)


def _cifar_batch(path, n, label_key):
    data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = list(RNG.integers(0, 100, n))
    path.write_bytes(pickle.dumps({b"data": data, label_key: labels, b"batch_label": b"x"}))
    return data, labels


def test_cifar10_batches(tmp_path):
    batches = [_cifar_batch(tmp_path / f"data_batch_{i}", 3, b"labels") for i in range(1, 6)]
    test = _cifar_batch(tmp_path / "test_batch", 4, b"labels")
    data = load_images(tmp_path)
    assert data.train_images.shape == (15, 32, 32, 3) and data.test_images.shape == (4, 32, 32, 3)
    # Row layout: the red plane, then green, then blue, each 32x32 row-major.
    assert data.train_images[0, 1, 2, 0] == batches[0][0][0, 1 * 32 + 2]
    assert data.train_images[0, 1, 2, 2] == batches[0][0][0, 2048 + 1 * 32 + 2]
    np.testing.assert_array_equal(data.test_labels, test[1])


def test_cifar100_batches(tmp_path):
    _cifar_batch(tmp_path / "train", 6, b"fine_labels")
    _cifar_batch(tmp_path / "test", 2, b"fine_labels")
    data = load_images(tmp_path)
    assert data.train_images.shape == (6, 32, 32, 3) and data.test_labels.shape == (2,)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in ("train", "test"):
        (tmp_path / name).write_bytes(pickle.dumps({b"data": Evil(), b"fine_labels": [0]}))
    with pytest.raises(DataError, match=r"train: not a CIFAR python batch .*refused to load builtins.print"):
        load_images(tmp_path)


def _png(path, size=(6, 5), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": (), "RGB": (3,)}[mode]
    Image.fromarray(RNG.integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8), mode).save(path)


def test_class_folders_with_train_and_test(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for c in ("cat", "dog"):
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.png", mode="RGB")
    data = load_images(tmp_path)
    assert data.train_images.shape == (6, 5, 6, 3) and data.test_images.shape == (2, 5, 6, 3)
    np.testing.assert_array_equal(data.train_labels, [0, 0, 0, 1, 1, 1])


def test_flat_class_folders_hold_out_every_kth_image(tmp_path):
    for c in ("a", "b", "c"):
        for i in range(6):
            _png(tmp_path / c / f"{i}.png")
    data = load_images(tmp_path, holdout=3)
    assert data.train_images.shape == (12, 5, 6, 1) and data.test_images.shape == (6, 5, 6, 1)
    np.testing.assert_array_equal(data.test_labels, [0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: (p / "x.npz").write_bytes(b"PK\x03\x04broken"), r"x\.npz: not a readable \.npz file"),
        (lambda p: _npz(p / "x.npz", y_test=None), r"x\.npz: missing y_test"),
        (lambda p: _npz(p / "x.npz", y_test=np.zeros(4, np.int64)), r"test labels have shape \(4,\); expected \(5,\)"),
        (lambda p: _npz(p / "x.npz", x_test=np.zeros((5, 9, 9, 3))), r"training images are \(8, 8, 3\) but test"),
        (lambda p: _npz(p / "x.npz", x_train=np.full((12, 8, 8, 3), np.nan)), r"finite pixels in 0\.\.255"),
        (lambda p: (p / "x.txt").write_text("hi"), r"x\.txt: not an image set"),
    ],
)
def test_malformed_files_give_one_line_naming_the_file(tmp_path, make, match):
    make(tmp_path)
    target = next(tmp_path.iterdir())
    with pytest.raises(DataError, match=match) as e:
        load_images(target)
    assert "\n" not in str(e.value) and target.name in str(e.value)


def test_malformed_images_in_folders_are_named(tmp_path):
    _png(tmp_path / "a" / "0.png")
    _png(tmp_path / "a" / "1.png", size=(7, 7))
    with pytest.raises(DataError, match=r"1\.png: \(7, 7\) pixels, but .*0\.png has \(5, 6\)"):
        load_images(tmp_path, holdout=2)
    (tmp_path / "a" / "1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"1\.png: not a readable image"):
        load_images(tmp_path, holdout=2)
    with pytest.raises(DataError, match="does not exist"):
        load_images(tmp_path / "missing")
    with pytest.raises(DataError, match="holdout must be an integer"):
        load_images(tmp_path, holdout=1)
