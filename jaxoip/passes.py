"""Passes of a compiled per-batch program over image batches (`run_pass`), and the results of passes over
data sets kept on disk between processes (the pass cache).

A pass runs its program on one batch at a time: one program per batch shape, however many batches, so an
image's values never depend on how many images pass with it, and a pass over 10,000 test images shares its
program with a pass over a few OIPs (one XLA compilation fewer; a `lax.map` over 20 batches compiled twice
as long as the one-batch program and gives the same bits).

A scan's data pass runs the network over the 10,000 test images to find each map's mean, maxima and exemplars,
and its result does not depend on the search's settings: a second scan of the same layer (another seed, more
steps, other maps) reads it back instead of running it again. An entry is keyed by the pass itself: the
program as JAX lowers it (the network, layer, reduction, precision and batch shape), every input array's
bytes (weights and images), and the JAX version and device that computed it, so it is the very result the
pass would give here, bit for bit. A damaged or foreign entry is recomputed and replaced.

The commands keep the cache beside JAX's compilation cache (`jaxoip.cli.enable_caches`; `--no-cache` turns
both off); a library user turns it on with `use_pass_cache(folder)`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from jaxtyping import Shaped

from jaxoip import numerics
from jaxoip.compiles import PASS_CACHE_HIT_EVENT

_VERSION = b"jaxoip pass cache 1"
_folder: Path | None = None


def use_pass_cache(folder: str | os.PathLike | None) -> None:
    """Keeps passes in `folder` from now on in this process (created when first written), or none (None)."""
    global _folder
    _folder = None if folder is None else Path(folder)


def run_pass(program: Callable, params, batches: Shaped[np.ndarray, "steps b ..."], static: dict, cache: bool = False):
    """`program(params, batch, **static)` for every batch (B, ...) of `batches` (steps, B, ...), the results
    (B, ...) concatenated into (steps * B, ...) NumPy arrays; all batches are dispatched before
    `numerics.fetch` waits (a Ctrl-C lands while they run). With `cache` and a folder set: read back when this
    program ran on these very inputs before, else computed and kept."""
    import jax

    folder = _folder
    if not cache or folder is None or not len(batches):
        return _run(program, params, batches, static)
    lowered = program.lower(params, batches[0], **static)
    out_info = jax.tree.leaves(lowered.out_info)
    expected = [jax.ShapeDtypeStruct((len(batches) * e.shape[0], *e.shape[1:]), e.dtype) for e in out_info]
    path = folder / f"{_key(lowered.as_text(), (params, batches))}.npz"
    found = _read(path, jax.tree.structure(lowered.out_info), expected)
    if found is not None:
        jax.monitoring.record_event(PASS_CACHE_HIT_EVENT)
        return found
    out = _run(program, params, batches, static)
    _write(path, jax.tree.leaves(out))
    return out


def _run(program: Callable, params, batches: Shaped[np.ndarray, "steps b ..."], static: dict):
    import jax

    if not len(batches):  # No images: the empty results, shaped as the program's.
        one = jax.ShapeDtypeStruct(batches.shape[1:], batches.dtype)
        out = jax.eval_shape(lambda b: program(params, b, **static), one)
        return jax.tree.map(lambda e: np.zeros((0, *e.shape[1:]), e.dtype), out)
    outs = numerics.fetch([program(params, batch, **static) for batch in batches])
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


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


@functools.cache
def _cpu_flags() -> str:
    """The host CPU's features (XLA compiles for them, and the last bits of a result may follow them); read once."""
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
