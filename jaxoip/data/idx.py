"""MNIST's IDX files as bytes, with the Python standard library only: a command starts reading them on a thread
(`prefetch`) before it imports JAX, and the loader (`jaxoip.data.mnist`) takes what was read (`file_bytes`).

A gzipped file is decompressed in one call, which releases the interpreter's lock for its whole length, so the
read overlaps the main thread's imports; bytes read ahead are used only if the file's size and modification
time are still those it had when it was read.
"""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from concurrent.futures import Future
from pathlib import Path

DATA_DIR_ENV = "JAXOIP_DATA_DIR"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# What reading a damaged file raises: truncated gzip (EOFError), bad header or CRC (OSError), bad deflate data.
READ_ERRORS = (OSError, EOFError, zlib.error)

_ahead: dict[Path, Future] = {}
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


def prefetch(data_dir: str | os.PathLike) -> None:
    """Starts reading the four IDX files of `data_dir` (those present) on a daemon thread; `file_bytes` takes them."""
    folder = Path(data_dir).expanduser()
    paths = [p.resolve() for p in (idx_path(folder, s) for s in IDX_FILES.values()) if p is not None]
    with _lock:
        todo = [(p, _ahead.setdefault(p, Future())) for p in paths if p not in _ahead]

    def run():
        for path, future in todo:
            try:
                stat = path.stat()
                future.set_result(((stat.st_size, stat.st_mtime_ns), read_idx_bytes(path)))
            except BaseException:  # noqa: BLE001 - `file_bytes` reads the file again and reports the error itself.
                future.set_result(None)

    if todo:
        threading.Thread(target=run, name="jaxoip-idx", daemon=True).start()


def file_bytes(path: Path) -> bytes:
    """`read_idx_bytes(path)`: what `prefetch` read, when it read this very file, else read now."""
    with _lock:
        future = _ahead.pop(path.resolve(), None) if _ahead else None
    ahead = future.result() if future is not None else None
    if ahead is not None:
        stat = path.stat()
        if ahead[0] == (stat.st_size, stat.st_mtime_ns):
            return ahead[1]
    return read_idx_bytes(path)
