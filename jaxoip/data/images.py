"""Labelled image sets beyond MNIST: IDX folders, Keras-style `.npz`, CIFAR "python" batches, class folders.

`load_images(path)` tells the format from what `path` holds and returns the same dataset object as
`load_mnist` (pixels 0-255 as float32 (N, H, W, C), labels int32 (N,)), for any image size and channel count:

- a folder with the four IDX files of MNIST, Fashion-MNIST or KMNIST (optionally gzipped);
- a `.npz` file with `x_train`, `y_train`, `x_test`, `y_test` (what `keras.datasets.*.load_data()` returns);
- a CIFAR-10 or CIFAR-100 "python version" folder (`data_batch_1`...`data_batch_5` and `test_batch`, or
  `train` and `test`), read with an unpickler that builds only NumPy arrays and plain containers;
- a folder of class subfolders of PNG/JPEG images, either `train/<class>/` and `test/<class>/`, or `<class>/`
  directly (then every `holdout`-th image of each class, in file-name order, is the test split).

A malformed file is reported in one line naming it (`DataError`).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

from jaxoip._check import INT32_MAX
from jaxoip.data.mnist import IDX_FILES, MNIST, load_idx_dir, load_mnist, optional_mnist
from jaxoip.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_CIFAR10 = (tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels")
_CIFAR100 = (("train",), ("test",), b"fine_labels")


def load_images(path: str | os.PathLike, holdout: int = 6) -> MNIST:
    """The labelled images at `path`, in whichever of the four formats it holds (see the module's docstring)."""
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"path must be a file or folder path, got {path!r}")
    if not isinstance(holdout, int) or isinstance(holdout, bool) or holdout < 2:
        raise DataError(f"holdout must be an integer >= 2 (every holdout-th image is a test image), got {holdout!r}")
    path = Path(path).expanduser()
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if is_file:
        if path.suffix.lower() == ".npz":
            return load_npz(path)
        raise DataError(f"{path}: not an image set jaxoip reads (a .npz file, or a folder of IDX, CIFAR or images)")
    if not is_dir:
        raise DataError(f"image data {path} does not exist")
    names = {p.name for p in path.iterdir() if p.is_file()}
    if any(stem in names or f"{stem}.gz" in names for stem in IDX_FILES.values()):
        return load_idx_dir(path)
    for train, test, label_key in (_CIFAR10, _CIFAR100):
        if set(train) | set(test) <= names:
            return _load_cifar(path, train, test, label_key)
    return load_image_folder(path, holdout)


def check_data_source(path: str | os.PathLike | None, data_dir: str | os.PathLike | None) -> None:
    """One source of images: a path (`--data`) or an MNIST folder (`--data-dir`), not both."""
    if path is not None and data_dir is not None:
        raise DataError("give --data (any image set) or --data-dir (MNIST), not both")


def load_data(
    path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None, optional: bool = False
) -> MNIST | None:
    """The images of a command: `load_images(path)` when a path is given (`--data`), else MNIST from `data_dir`
    or `$JAXOIP_DATA_DIR` (`--data-dir`; with `optional`, None when no MNIST is configured or found)."""
    check_data_source(path, data_dir)
    if path is not None:
        return load_images(path)
    return optional_mnist(data_dir) if optional else load_mnist(data_dir)


def _dataset(train_x, train_y, test_x, test_y, source: str, class_names: tuple[str, ...] = ()) -> MNIST:
    """Checked, read-only float32 (N, H, W, C) pixels and int32 labels of one image size."""

    def images(x, what):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or min(x.shape[1:3]) < 1:
            raise DataError(f"{source}: {what} have shape {x.shape}; expected (N, H, W) or (N, H, W, C), C 1, 3 or 4")
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{source}: {what} are of type {x.dtype}, not numbers")
        x = x.astype(np.float32)
        if not np.isfinite(x).all() or (x.size and (x.min() < 0 or x.max() > 255)):
            raise DataError(f"{source}: {what} must be finite pixels in 0..255")
        x.setflags(write=False)
        return x

    def labels(y, n, what):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or y.shape[0] != n:
            raise DataError(f"{source}: {what} have shape {y.shape}; expected ({n},), one per image")
        if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
            raise DataError(f"{source}: {what} must be non-negative integers (class indices)")
        if y.size and int(y.max()) > INT32_MAX:  # int32 would wrap it around to another class.
            raise DataError(f"{source}: {what} hold {int(y.max())}, beyond the int32 class indices jaxoip uses")
        y = y.astype(np.int32)
        y.setflags(write=False)
        return y

    train_images, test_images = images(train_x, "training images"), images(test_x, "test images")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{source}: training images are {train_images.shape[1:]} but test images {test_images.shape[1:]}"
        )
    if not len(train_images) or not len(test_images):
        raise DataError(f"{source}: the training and test splits must each hold at least one image")
    return MNIST(
        train_images=train_images,
        train_labels=labels(train_y, len(train_images), "training labels"),
        test_images=test_images,
        test_labels=labels(test_y, len(test_images), "test labels"),
        source=source,
        class_names=tuple(class_names),
    )


def load_npz(path: str | os.PathLike) -> MNIST:
    """A Keras-style `.npz`: `x_train`, `y_train`, `x_test`, `y_test` (images (N, H, W[, C]) in 0..255)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(
                    f"{path}: missing {', '.join(missing)} (a Keras-style .npz holds {', '.join(NPZ_KEYS)})"
                )
            arrays = [f[k] for k in NPZ_KEYS]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # Not a zip, truncated, or object arrays.
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {str(e)[:120]})") from None
    return _dataset(*arrays, source=f"npz:{path.resolve()}")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles NumPy arrays and plain containers only: a CIFAR batch needs nothing else, and code cannot run."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, IndexError) as e:
        raise DataError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {str(e)[:120]})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DataError(f"{path}: CIFAR data of shape {data.shape} and type {data.dtype}; expected (N, 3072) uint8")
    # Rows hold the red, green and blue planes of a 32x32 image one after the other.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _load_cifar(folder: Path, train: tuple[str, ...], test: tuple[str, ...], label_key: bytes) -> MNIST:
    def split(names):
        parts = [_read_batch(folder / n, label_key) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    return _dataset(*split(train), *split(test), source=f"cifar:{folder.resolve()}", class_names=_cifar_names(folder))


def _cifar_names(folder: Path) -> tuple[str, ...]:
    """The class names of CIFAR's `batches.meta` (CIFAR-10) or `meta` (CIFAR-100); () when it is absent."""
    for name, key in (("batches.meta", b"label_names"), ("meta", b"fine_label_names")):
        if (folder / name).is_file():
            try:
                meta = _ArraysOnly(io.BytesIO((folder / name).read_bytes()), encoding="bytes").load()
                return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[key])
            except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, IndexError) as e:
                raise DataError(
                    f"{folder / name}: not CIFAR's class names ({type(e).__name__}: {str(e)[:120]})"
                ) from None
    return ()


def _class_folders(root: Path) -> dict[str, list[Path]]:
    classes = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files:
            classes[sub.name] = files
    return classes


# Grayscale modes of more than 8 bits (16-bit PNGs open as "I;16" or "I"): converting them to "L" clips.
_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I")


def _read_image(path: Path, color: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib.

    try:
        with Image.open(path) as im:
            if im.mode not in _WIDE_GRAY:
                return np.asarray(im.convert("RGB" if color else "L"))
            x = np.asarray(im, np.float64)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {str(e)[:120]})") from None
    if x.size and (x.min() < 0 or x.max() > 65535):
        raise DataError(f"{path}: {im.mode} pixels beyond 0..65535; jaxoip reads 8- and 16-bit images")
    x = (x / 257.0).astype(np.float32)  # 16-bit 0..65535 onto the 0..255 of 8-bit pixels.
    return np.repeat(x[..., None], 3, axis=-1) if color else x


def _is_color(paths: list[Path]) -> bool:
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path) as im:
                if im.mode not in ("1", "L", "I", "I;16", "F"):
                    return True
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: not a readable image ({type(e).__name__}: {str(e)[:120]})") from None
    return False


def _stack(paths: list[Path], color: bool) -> np.ndarray:
    images = [_read_image(p, color) for p in paths]
    for p, im in zip(paths, images):
        if im.shape != images[0].shape:
            raise DataError(f"{p}: {im.shape[:2]} pixels, but {paths[0]} has {images[0].shape[:2]}; sizes must match")
    return np.stack(images)


def load_image_folder(root: str | os.PathLike, holdout: int = 6) -> MNIST:
    """PNG/JPEG images in class subfolders (`train/<class>/`, `test/<class>/`, or `<class>/` with a holdout split).

    Classes are numbered in sorted folder-name order; colour images give 3 channels, grayscale ones 1.
    """
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _class_folders(root / "train"), _class_folders(root / "test")
        if set(test) - set(train):
            raise DataError(f"{root / 'test'}: classes {sorted(set(test) - set(train))} have no training images")
        split = {"train": train, "test": test}
    else:
        classes = _class_folders(root)
        split = {
            "train": {c: [p for i, p in enumerate(ps) if i % holdout != holdout - 1] for c, ps in classes.items()},
            "test": {c: [p for i, p in enumerate(ps) if i % holdout == holdout - 1] for c, ps in classes.items()},
        }
    names = sorted(split["train"])
    if not names:
        raise DataError(f"{root}: no class subfolders with PNG or JPEG images (nor a .npz, IDX or CIFAR data set)")
    index = {c: i for i, c in enumerate(names)}
    files = {s: [(p, index[c]) for c in sorted(v) for p in v[c]] for s, v in split.items()}
    for s in ("train", "test"):
        if not files[s]:
            raise DataError(f"{root}: no {s} images (each class needs at least {holdout} images for a holdout split)")
    paths = [p for s in ("train", "test") for p, _ in files[s]]
    images = _stack(paths, _is_color(paths))
    n = len(files["train"])
    labels = [np.array([y for _, y in files[s]], np.int32) for s in ("train", "test")]
    source = f"folder:{root.resolve()}"
    return _dataset(images[:n], labels[0], images[n:], labels[1], source=source, class_names=names)
