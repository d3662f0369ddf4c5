"""MNIST loading (IDX files, or tensorflow-datasets from the optional `tfds` extra) and the study's standardization."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
from jaxtyping import ArrayLike, Float, Int

from jaxoip._check import check_type
from jaxoip.data.idx import DATA_DIR_ENV, IDX_FILES, IDX_NDIM, checksum_ahead, idx_path, load_idx
from jaxoip.errors import CheckpointError, DataError, JaxoipError

# The study's standardization: mean and std of MNIST's training pixels (the reference model's).
MNIST_MEAN, MNIST_STD = 33.318421449829934, 78.56748998339798
# Bounds of a usable standardization of image data (pixels 0..255, or 0..1): a std below 1e-3 blows inputs
# up by a factor of more than 1000 and anything past 1e4 is not pixel statistics.
STD_RANGE = (1e-3, 1e4)
MAX_ABS_MEAN = 1e4
# --input-scale presets, as pixel mean and std: pixels -> (pixels - mean) / std.
INPUT_SCALES = {
    "0..255": (0.0, 1.0),
    "0..1": (0.0, 255.0),
    "-1..1": (127.5, 127.5),
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}


@dataclasses.dataclass(frozen=True)
class MNIST:
    """A labelled image set in raw pixel units (0-255): MNIST's images float32 (N, 28, 28, 1), or any (N, H, W, C)
    from `jaxoip.load_images`; labels int32 (N,)."""

    train_images: Float[np.ndarray, "n_train 28 28 1"]
    train_labels: Int[np.ndarray, " n_train"]
    test_images: Float[np.ndarray, "n_test 28 28 1"]
    test_labels: Int[np.ndarray, " n_test"]
    source: str
    class_names: tuple[str, ...] = ()  # Label i's name (class folders, CIFAR's meta); () for MNIST's digits.

    def class_name(self, label: int) -> str:
        """The name of class `label`: its folder or CIFAR name where the data has one, else the number."""
        label = int(label)
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def split(self, name: str) -> tuple[Float[np.ndarray, "n 28 28 1"], Int[np.ndarray, " n"]]:
        """Images and labels of the split `train` or `test`."""
        if name not in ("train", "test"):
            raise DataError(f"unknown image set {name!r}: use 'train' or 'test'")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

    def checksum(self) -> str:
        """SHA-256 over all pixels and labels: identifies the data a model was trained on. Computed once per
        object whose arrays are read-only, as the loaders make them (arrays that can change are hashed anew)."""
        arrays = (self.train_images, self.train_labels, self.test_images, self.test_labels)
        if any(np.asarray(a).flags.writeable for a in arrays):
            return self._checksum_now()
        return self._checksum

    @functools.cached_property
    def _checksum(self) -> str:
        return self._checksum_now()

    def _checksum_now(self) -> str:
        h = hashlib.sha256()
        for a in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            h.update(np.ascontiguousarray(a).data)  # The bytes of `tobytes()`, hashed without a copy.
        return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Standardization:
    """Pixel mean and standard deviation (one value, or one per channel); maps pixels <-> network inputs.

    The study standardized with one mean and std over MNIST's training set; a Keras model's `Rescaling`
    and `Normalization` layers become per-channel values.
    """

    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]

    def __post_init__(self):
        for field in ("mean", "std"):  # Lists (e.g. from JSON) become tuples, so the object stays hashable.
            v = getattr(self, field)
            if isinstance(v, (list, tuple, np.ndarray)):
                object.__setattr__(self, field, tuple(float(x) for x in np.ravel(v)))

    @classmethod
    def fit(cls, train_images: np.ndarray) -> Standardization:
        x = np.asarray(train_images, np.float64)
        return cls(mean=float(x.mean()), std=float(x.std()))

    @classmethod
    def identity(cls) -> Standardization:
        """For a network that takes its inputs as they are."""
        return cls(mean=0.0, std=1.0)

    @classmethod
    def mnist(cls) -> Standardization:
        """The study's: one mean and std over MNIST's 60,000 training images (what `fit` gives for them)."""
        return cls(mean=MNIST_MEAN, std=MNIST_STD)

    @classmethod
    def parse(cls, text: str) -> Standardization:
        """The input scale a pretrained model expects, from `--input-scale`: `0..1`, `-1..1`, `imagenet`
        (torchvision's mean and std on [0, 1]), `0..255` (pixels as they are), or `MEAN,STD` on the [0, 1]
        scale, each one value or one per channel separated by `/` (`0.5/0.5/0.5,0.25/0.25/0.25`)."""
        key = str(text).strip().lower()
        if key in INPUT_SCALES:
            mean, std = INPUT_SCALES[key]
            return cls(mean=mean, std=std)
        parts = key.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            mean, std = ([float(v) for v in part.split("/")] for part in parts)
        except ValueError:
            raise JaxoipError(
                f"input scale {text!r}: use 0..1, -1..1, 0..255, imagenet, or MEAN,STD on the [0, 1] scale "
                "(per channel: M1/M2/M3,S1/S2/S3)"
            ) from None
        if len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise JaxoipError(f"input scale {text!r}: the mean has {len(mean)} values, the std {len(std)}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and min(std) > 0):
            raise JaxoipError(f"input scale {text!r}: the mean must be finite and the std positive")
        scaled = lambda v: 255.0 * v[0] if len(v) == 1 else tuple(255.0 * x for x in v)  # noqa: E731
        return cls(mean=scaled(mean), std=scaled(std))

    def check(self, where: str = "the standardization") -> Standardization:
        """Itself, if it maps image pixels to inputs usably (`check_standardization`); one line otherwise."""
        check_standardization(self.mean, self.std, where)
        return self

    def _values(self, ndim: int):
        """Mean and std as given (scalars), or per channel with the images' rank (JAX refuses rank promotion)."""
        shape = (1,) * (ndim - 1) + (-1,)
        as_array = lambda v: np.asarray(v, np.float32).reshape(shape) if isinstance(v, tuple) else v  # noqa: E731
        return as_array(self.mean), as_array(self.std)

    def __call__(self, pixels: Float[ArrayLike, "*shape"]) -> Float[ArrayLike, "*shape"]:
        """Standardized images from pixels, NumPy or JAX as given."""
        mean, std = self._values(np.ndim(pixels))
        return (pixels - mean) / std

    def to_pixels(self, standardized: Float[ArrayLike, "*shape"]) -> Float[ArrayLike, "*shape"]:
        """Pixels from standardized images."""
        mean, std = self._values(np.ndim(standardized))
        return standardized * std + mean

    def to_dict(self) -> dict:
        return {
            "mean": list(self.mean) if isinstance(self.mean, tuple) else self.mean,
            "std": list(self.std) if isinstance(self.std, tuple) else self.std,
        }


def _find_idx(data_dir: Path, stem: str) -> Path:
    path = idx_path(data_dir, stem)
    if path is None:
        raise DataError(f"missing MNIST file {stem}[.gz] in {data_dir}")
    return path


def load_idx_dir(data_dir: str | os.PathLike) -> MNIST:
    """Reads the four standard IDX files (optionally gzipped) from `data_dir`."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"MNIST data directory {data_dir} does not exist")
    arrays = {}
    for key, stem in IDX_FILES.items():
        arrays[key] = load_idx(_find_idx(data_dir, stem), IDX_NDIM[key])  # Read ahead, maybe.
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{split} set in {data_dir}: {images.shape[0]} images but {labels.shape[0]} labels")
        if images.shape[1:] != (28, 28):
            raise DataError(f"{split} images in {data_dir} are {images.shape[1:]}, expected (28, 28)")
        if labels.size and labels.max() > 9:
            raise DataError(f"{split} labels in {data_dir} contain {labels.max()}, expected 0..9")
    data = _to_mnist(arrays, source=f"idx:{data_dir.resolve()}")
    digest = checksum_ahead([arrays[k] for k in IDX_FILES])
    if digest is not None:  # Computed while the files were read ahead (`jaxoip.data.idx.prefetch`).
        data.__dict__["_checksum"] = digest
    return data


def _to_mnist(arrays: dict, source: str) -> MNIST:
    def frozen(a, dtype, shape):
        a = np.asarray(a).astype(dtype, copy=False).reshape(shape)  # Read as float32/int32: no copy.
        a.setflags(write=False)  # Cached and shared between callers.
        return a

    return MNIST(
        train_images=frozen(arrays["train_images"], np.float32, (-1, 28, 28, 1)),
        train_labels=frozen(arrays["train_labels"], np.int32, (-1,)),
        test_images=frozen(arrays["test_images"], np.float32, (-1, 28, 28, 1)),
        test_labels=frozen(arrays["test_labels"], np.int32, (-1,)),
        source=source,
    )


HOW_TO_ADD = f"--data-dir DIR (data_dir=...) or {DATA_DIR_ENV}=DIR, a folder with the four MNIST IDX files"
NO_DATA_HINT = f"pass {HOW_TO_ADD}, or pip install 'jaxoip[tfds]' to download MNIST with tensorflow-datasets"


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _load_tfds() -> MNIST:
    """MNIST through tensorflow-datasets (the `tfds` extra), which builds it with TensorFlow."""
    try:
        import tensorflow_datasets as tfds  # Heavy import: only on the fallback path.
    except ImportError:
        raise DataError(f"no MNIST data: {NO_DATA_HINT}") from None
    if not _tensorflow_installed():
        raise DataError(f"no MNIST data: tensorflow-datasets needs TensorFlow to build MNIST; {NO_DATA_HINT}")
    arrays = {}
    try:
        for split in ("train", "test"):
            images, labels = tfds.as_numpy(tfds.load("mnist", split=split, batch_size=-1, as_supervised=True))
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    except Exception as e:  # noqa: BLE001 - download, build and file errors of many types mean "no data".
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DataError(
            f"no MNIST data: tensorflow-datasets could not load 'mnist' ({type(e).__name__}: {first}); {NO_DATA_HINT}"
        ) from None
    for split in ("train", "test"):
        images, labels = np.asarray(arrays[f"{split}_images"]), np.asarray(arrays[f"{split}_labels"])
        if images.shape[1:] not in ((28, 28), (28, 28, 1)) or images.shape[0] != labels.shape[0]:
            raise DataError(f"tensorflow-datasets gave {split} images {images.shape} and labels {labels.shape}")
    return _to_mnist(arrays, source="tensorflow-datasets:mnist")


@functools.lru_cache(maxsize=4)
def _load_cached(data_dir: str | None) -> MNIST:
    return load_idx_dir(data_dir) if data_dir else _load_tfds()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str | None:
    """The explicit `data_dir`, else `$JAXOIP_DATA_DIR`, else None (tensorflow-datasets, if installed)."""
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise DataError(f"data_dir must be a folder path, got {data_dir!r}")
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if not chosen:
        return None
    where = f"--data-dir {chosen}" if data_dir is not None else f"{DATA_DIR_ENV}={chosen}"
    try:
        path = Path(chosen).expanduser().resolve()
        path.stat()  # A name too long, a loop or a forbidden folder is the data path's fault, said here.
    except FileNotFoundError:
        pass  # Reported by the loader, which names the missing files.
    except (OSError, RuntimeError) as e:  # Python < 3.13 reports a symlink loop as RuntimeError.
        cause = "a symlink loop" if isinstance(e, RuntimeError) else e.strerror or str(e)
        raise DataError(f"MNIST data directory ({where}) cannot be used: {cause}") from None
    return str(path)


def load_mnist(data_dir: str | os.PathLike | None = None) -> MNIST:
    """Loads MNIST from `data_dir`, `$JAXOIP_DATA_DIR`, or tensorflow-datasets (`pip install 'jaxoip[tfds]'`).

    Arrays are read-only and cached: repeated calls in one process cost nothing.
    """
    return _load_cached(resolve_data_dir(data_dir))


def optional_mnist(data_dir: str | os.PathLike | None = None) -> MNIST | None:
    """`load_mnist(data_dir)`, or None when no folder is configured and tensorflow-datasets has no MNIST.

    A folder that was named (`data_dir` or `$JAXOIP_DATA_DIR`) must load: its errors are raised.
    """
    if resolve_data_dir(data_dir) is not None:
        return load_mnist(data_dir)
    try:
        return load_mnist(None)
    except DataError:
        return None


def data_available(data_dir: str | os.PathLike | None = None) -> bool:
    """Whether IDX data is configured and loads (does not try the network)."""
    chosen = resolve_data_dir(data_dir)
    if not chosen:
        return False
    try:
        load_mnist(chosen)
    except DataError:
        return False
    return True


def check_data_shape(data: MNIST | None, input_shape: tuple[int, ...]) -> MNIST | None:
    """`data` if its images have the model's `input_shape` (H, W, C); else one line naming both (None passes)."""
    if data is not None and tuple(data.train_images.shape[1:]) != tuple(input_shape):
        h, w, c = data.train_images.shape[1:]
        want = "x".join(str(v) for v in input_shape)
        raise DataError(
            f"the images of {data.source} are {h}x{w}x{c} (height x width x channels), but the model takes {want}"
        )
    return data


def check_data(data, optional: bool = False):
    """An `MNIST` (from `load_mnist`); None passes when `optional`."""
    if data is None and optional:
        return None
    return check_type("data", data, MNIST, " (from jaxoip.load_mnist)", DataError)


def check_standardization(mean, std, where: str):
    """A usable standardization of image data: finite values, the mean and std within the bounds above."""
    values = [v for x in (mean, std) for v in (x if isinstance(x, (list, tuple)) else [x])]
    ok = (
        all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        and np.isfinite(values).all()
        and all(STD_RANGE[0] <= s <= STD_RANGE[1] for s in (std if isinstance(std, (list, tuple)) else [std]))
        and all(abs(m) <= MAX_ABS_MEAN for m in (mean if isinstance(mean, (list, tuple)) else [mean]))
    )
    if not ok:
        raise CheckpointError(
            f"{where} has an unusable standardization (mean {mean}, std {std}): image data needs a finite mean "
            f"within +-{MAX_ABS_MEAN:g} and a std between {STD_RANGE[0]:g} and {STD_RANGE[1]:g}"
        )


def model_standardization(given, input_shape, refusal: str) -> tuple[Standardization, str]:
    """(the standardization of a foreign model, where it came from): `given`, checked; for a 28x28x1 model
    without one, the study's MNIST standardization; otherwise a `JaxoipError` saying `refusal`."""
    if given is None and tuple(input_shape) == (28, 28, 1):
        return Standardization.mnist(), "the study's MNIST standardization (default for 28x28x1 models)"
    if given is None:
        raise JaxoipError(refusal)
    check_type("standardization", given, Standardization)
    return given.check(), "given"
