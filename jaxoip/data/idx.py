"""MNIST's IDX files read into arrays with NumPy and the standard library only (no JAX): a command starts reading
them on a thread (`prefetch`) before it imports JAX, and the loader (`jaxoip.data.mnist`) takes what was read
(`load_idx`).

A gzipped file is decompressed in one call and converted by NumPy, both of which release the interpreter's lock,
so the read overlaps the main thread's imports; what was read ahead is used only if the file's size and
modification time are still those it had when it was read.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import zlib
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from jaxtyping import Shaped  # Not ArrayLike, whose import starts JAX's.

from jaxoip.errors import DataError

DATA_DIR_ENV = "JAXOIP_DATA_DIR"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# What reading a damaged file raises: truncated gzip (EOFError), bad header or CRC (OSError), bad deflate data.
READ_ERRORS = (OSError, EOFError, zlib.error)
IDX_NDIM = {key: 3 if key.endswith("images") else 1 for key in IDX_FILES}  # Images (n, h, w), labels (n,).
# Magic numbers of the IDX format: 0x0000 0x08 (uint8) then the number of dimensions.
MAGIC = {3: 2051, 1: 2049}

_ahead: dict[Path, Future] = {}
# The ids of four arrays read ahead together -> (those arrays, MNIST's SHA-256 of them).
_checksums: dict[tuple[int, ...], tuple[list[Shaped[np.ndarray, "n ..."]], str]] = {}
_lock = threading.Lock()


def idx_path(data_dir: Path, stem: str) -> Path | None:
    """`data_dir`/`stem`, or its gzipped `stem`.gz; None when neither is a file."""
    for name in (stem, stem + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def read_idx_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it ends in .gz; raises one of `READ_ERRORS` for a damaged file."""
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def load_idx(path: Path, ndim: int) -> Shaped[np.ndarray, "n ..."]:
    """The array of the IDX file `path` of `ndim` dimensions, as the loader keeps it: images float32, labels
    int32; read ahead by `prefetch` when it read this very file, else read now. One line for a damaged file."""
    with _lock:
        future = _ahead.pop(path.resolve(), None) if _ahead else None
    ahead = future.result() if future is not None else None
    if ahead is not None:
        stat = path.stat()
        if ahead[0] == (stat.st_size, stat.st_mtime_ns, ndim):
            return ahead[1]
    return _converted(_parse(path, ndim), ndim)


def _parse(path: Path, ndim: int) -> Shaped[np.ndarray, "n ..."]:
    try:
        raw = read_idx_bytes(path)
    except READ_ERRORS as e:
        raise DataError(f"cannot read {path}: {e}") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than the IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != MAGIC[ndim]:
        raise DataError(
            f"{path} has magic number {magic}, expected {MAGIC[ndim]} (an IDX file of uint8 with {ndim} dimension(s))"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or padded: {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _converted(a: Shaped[np.ndarray, "n ..."], ndim: int) -> Shaped[np.ndarray, "n ..."]:
    return a.astype(np.float32 if ndim == 3 else np.int32)


def prefetch(data_dir: str | os.PathLike) -> None:
    """Starts reading the four IDX files of `data_dir` (those present) on a daemon thread; `load_idx` takes them,
    and when all four were read, `checksum_ahead` their checksum."""
    folder = Path(data_dir).expanduser()
    found = [(p.resolve(), IDX_NDIM[key]) for key, p in ((k, idx_path(folder, s)) for k, s in IDX_FILES.items()) if p]
    with _lock:
        todo = [(p, n, _ahead.setdefault(p, Future())) for p, n in found if p not in _ahead]

    def run():
        results, digest = [], hashlib.sha256()
        for path, ndim, _ in todo:
            try:
                stat = path.stat()
                array = _converted(_parse(path, ndim), ndim)
                digest.update(array.data)  # MNIST.checksum's bytes, in its order (IDX_FILES').
                results.append(((stat.st_size, stat.st_mtime_ns, ndim), array))
            except BaseException:  # noqa: BLE001 - `load_idx` reads the file again and reports the error itself.
                results.append(None)
        arrays = [r[1] for r in results if r is not None]
        if len(arrays) == len(IDX_FILES):  # Kept before the arrays are handed out, so the loader finds it.
            with _lock:
                _checksums[tuple(map(id, arrays))] = (arrays, digest.hexdigest())
        for (_, _, future), result in zip(todo, results):
            future.set_result(result)

    if todo:
        threading.Thread(target=run, name="jaxoip-idx", daemon=True).start()


def checksum_ahead(arrays: list[Shaped[np.ndarray, "n ..."]]) -> str | None:
    """`MNIST.checksum` of the four `arrays` (in IDX_FILES' order), when `prefetch` read these very arrays together
    and computed it on its thread; else None."""
    with _lock:
        entry = _checksums.pop(tuple(map(id, arrays)), None)
    if entry is None or any(a is not b for a, b in zip(entry[0], arrays)):
        return None
    return entry[1]
