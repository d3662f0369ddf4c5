"""Results of compiled passes over image sets, kept on disk between processes (`fetch_pass`).

A scan's data pass runs the network over the 10,000 test images to find each map's mean, maxima and exemplars,
and its result does not depend on the search's settings: a second scan of the same layer (another seed, more
steps, other maps) reads it back instead of running it again. An entry is keyed by the pass itself: the
program as JAX lowers it (the network, layer, reduction, precision and batch shapes), every input array's
bytes (weights and images), and the JAX version and device that computed it, so it is the very result the
pass would give here, bit for bit. A damaged or foreign entry is recomputed and replaced.

The commands keep the cache beside JAX's compilation cache (`jaxoip.cli.enable_caches`; `--no-cache` turns
both off); a library user turns it on with `use_pass_cache(folder)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxoip import numerics
from jaxoip.compiles import PASS_CACHE_HIT_EVENT

_VERSION = b"jaxoip pass cache 1"
_folder: Path | None = None


def use_pass_cache(folder: str | os.PathLike | None) -> None:
    """Keeps passes in `folder` from now on in this process (created when first written), or none (None)."""
    global _folder
    _folder = None if folder is None else Path(folder)


def pass_cache_folder() -> Path | None:
    """The folder passes are kept in, or None."""
    return _folder


def fetch_pass(program: Callable, args: tuple, static: dict, cache: bool = True):
    """`program(*args, **static)` (a jitted pass) as NumPy arrays, waited for by `numerics.fetch` (a Ctrl-C
    lands while it runs). With `cache` and a folder set: read from the cache when this program ran on these
    very inputs before, else computed and kept."""
    folder = _folder
    if not cache or folder is None:
        return numerics.fetch(program(*args, **static))
    import jax

    lowered = program.lower(*args, **static)
    path = folder / f"{_key(lowered.as_text(), args)}.npz"
    found = _read(path, jax.tree.structure(lowered.out_info), jax.tree.leaves(lowered.out_info))
    if found is not None:
        jax.monitoring.record_event(PASS_CACHE_HIT_EVENT)
        return found
    out = numerics.fetch(program(*args, **static))
    _write(path, jax.tree.leaves(out))
    return out


def _key(program_text: str, args) -> str:
    import jax

    h = hashlib.sha256(_VERSION)
    device = jax.devices()[0]
    for part in (jax.__version__, device.client.platform_version, device.device_kind, _cpu_flags(), program_text):
        h.update(part.encode() + b"\0")
    for a in jax.tree.leaves(args):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)  # Hashed where it lies: no copy of the images' bytes.
    return h.hexdigest()


def _cpu_flags() -> str:
    """The host CPU's features (XLA compiles for them, and the last bits of a result may follow them)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def _digest(leaves) -> str:
    h = hashlib.sha256()
    for a in leaves:
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _read(path: Path, treedef, expected):
    """The pass kept at `path`, with the tree structure, shapes and dtypes `expected`; None when there is none,
    or when it is damaged or not what the program gives."""
    import jax

    try:
        with np.load(path, allow_pickle=False) as f:
            leaves = [f[f"a{i}"] for i in range(len(expected))]
            digest = str(f["digest"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    fits = all(a.shape == e.shape and a.dtype == e.dtype for a, e in zip(leaves, expected))
    if not fits or digest != _digest(leaves):
        return None
    return jax.tree.unflatten(treedef, leaves)


def _write(path: Path, leaves) -> None:
    """Keeps `leaves` at `path`, whole or not at all (a temporary file renamed); a folder that cannot be
    written leaves the run uncached, silently: the cache only saves time."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, digest=np.asarray(_digest(leaves)), **{f"a{i}": a for i, a in enumerate(leaves)})
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
