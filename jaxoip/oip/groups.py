"""A long OIP search in fixed groups of chunks, each group saved so that a killed run resumes where it stopped.

The grouping does not depend on whether groups are saved, so a resumed search equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import jax
import numpy as np
from jaxtyping import Float, Int

from jaxoip import distributed
from jaxoip.models.cnn import CNN, WEIGHTS
from jaxoip.oip.objectives import Objective
from jaxoip.oip.search import OIPConfig, OIPResult, SearchSetup, run_search
from jaxoip.progress import Progress, WeightedPart, as_progress

# Chunks per saved group of a resumable search: a kill loses at most this many chunks of work.
GROUP_CHUNKS = 8


def _group_key(
    model: CNN,
    objective: Objective,
    maps: Int[np.ndarray, " n"],
    x0: Float[np.ndarray, "n H W ch"],
    config: OIPConfig,
    chunk: int,
    data_max: np.ndarray | None = None,
    magnitude: np.ndarray | None = None,
    setup: SearchSetup = SearchSetup(),
) -> str:
    """What a saved group's results depend on: the model, the target, the start images, the search and
    the data it normalizes by (selective) or takes its spectrum from (maco)."""
    from flax import nnx

    from jaxoip.models.checkpoint import params_checksum

    h = hashlib.sha256()
    h.update(params_checksum(nnx.to_pure_dict(nnx.state(model, WEIGHTS))).encode())
    # Not the device or process count: with `chunk` images per device, every count gives the same bits.
    h.update(repr((objective, config, setup, chunk, jax.default_backend())).encode())
    h.update(np.ascontiguousarray(maps, np.int32).tobytes())
    h.update(np.ascontiguousarray(x0, np.float32).tobytes())
    for extra in (data_max, magnitude):  # Which one is given follows from the config hashed above.
        if extra is not None:
            h.update(np.ascontiguousarray(extra, np.float32).tobytes())
    return h.hexdigest()


def group_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """The [lo, hi) image ranges of a search of `n` images in groups of `GROUP_CHUNKS` chunks of `chunk`."""
    size = chunk * GROUP_CHUNKS
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def saved_groups(partial_dir: str | os.PathLike, n: int, chunk: int) -> tuple[int, int]:
    """How many of the groups of a search of `n` images (`group_bounds`) lie saved in `partial_dir`, and of how
    many."""
    bounds = group_bounds(n, chunk)
    return sum((Path(partial_dir) / f"group_{g:05d}.npz").is_file() for g in range(len(bounds))), len(bounds)


_RESULT_ARRAYS = ("images", "objective", "traces", "snapshots", "converged_step", "stayed_zero", "woken")


def _load_group(path: Path | None, key: str | None, n: int) -> dict | None:
    """A finished group of `n` images saved by an earlier (killed) run, if it matches `key`; None otherwise.

    A damaged file (unreadable, or arrays of the wrong length or with NaN) is searched again, with a warning.
    """
    if path is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:  # The command's resume check passed: the search itself differs.
                print(
                    f"warning: saved search group {path} was made by another search (another jaxoip version, "
                    "chunk size or backend); searching it again",
                    file=sys.stderr,
                )
                return None
            part = {k: np.asarray(z[k]) for k in (*_RESULT_ARRAYS, "steps_run", "seconds")}
        if any(part[k].shape[:1] != (n,) for k in _RESULT_ARRAYS) or not np.isfinite(part["images"]).all():
            raise ValueError("its arrays do not fit the group")
        return part
    except Exception as e:  # noqa: BLE001 - a damaged zip or array file raises many types.
        why = (str(e).splitlines() or [type(e).__name__])[0][:120]
        print(f"warning: saved search group {path} is damaged ({why}); searching it again", file=sys.stderr)
        return None


def search_in_groups(
    model: CNN,
    objective: Objective,
    maps: Int[np.ndarray, " n"],
    x0: Float[np.ndarray, "n H W ch"],
    config: OIPConfig,
    chunk: int,
    progress: bool | Progress = False,
    partial_dir: str | os.PathLike | None = None,
    data_max: Float[np.ndarray, " c"] | None = None,
    magnitude: Float[np.ndarray, "H Wr"] | None = None,
    setup: SearchSetup = SearchSetup(),
) -> tuple[OIPResult, float]:
    """`run_search` over fixed groups of `GROUP_CHUNKS` chunks of `chunk` images per device; groups already in
    `partial_dir` are reused.

    The grouping depends neither on `partial_dir` nor on the device or process count, so a resumed search
    equals an uninterrupted one bit for bit, on as many processes as before or not. In a multi-process run
    only process 0 reads and writes `partial_dir` (the others pass None) and hands the groups it reused
    to the others.
    Returns the result, whose `seconds` sums the search time of the groups searched by this process, and the
    seconds that earlier (killed) processes spent on the groups reused from `partial_dir`.
    """
    n = len(maps)
    partial = Path(partial_dir) if partial_dir is not None else None
    if partial is not None:
        partial.mkdir(parents=True, exist_ok=True)
    parts, earlier = [], 0.0
    bounds = group_bounds(n, chunk)
    keys = [
        _group_key(model, objective, maps[lo:hi], x0[lo:hi], config, chunk, data_max, magnitude, setup)
        if partial
        else None
        for lo, hi in bounds
    ]
    # The groups an earlier run finished, read by process 0 (the only one with `partial_dir`) and handed to
    # the others in one exchange.
    done = {}
    for g, (lo, hi) in enumerate(bounds):
        part = _load_group(partial / f"group_{g:05d}.npz", keys[g], hi - lo) if partial else None
        done.update({f"{g}/{k}": v for k, v in (part or {}).items()})
    done = distributed.from_main(done, "the resumed search groups")
    # Counted in image-steps, each chunk as it returns, so that the rate and the time left are real.
    work = n * config.steps
    with as_progress(progress, total=work, desc=f"OIP search {objective.layer.name}", unit="image-step") as bar:
        for g, (lo, hi) in enumerate(bounds):
            key, path = keys[g], partial / f"group_{g:05d}.npz" if partial else None
            part = {k.split("/", 1)[1]: v for k, v in done.items() if k.split("/", 1)[0] == str(g)} or None
            if part is None:
                part_bar = WeightedPart(bar, (hi - lo) * config.steps)
                res = run_search(
                    model,
                    objective,
                    maps[lo:hi],
                    x0[lo:hi],
                    config,
                    chunk,
                    part_bar,
                    data_max,
                    magnitude,
                    fixed_chunk=True,
                    setup=setup,
                )
                part = {k: getattr(res, k) for k in _RESULT_ARRAYS}
                part.update(steps_run=res.steps_run, seconds=res.seconds)
                if path is not None:
                    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
                    np.savez(tmp, key=key, **part)
                    os.replace(tmp, path)
            else:
                earlier += float(part["seconds"])
                bar.skip((hi - lo) * config.steps)  # Done by the killed run: not part of this run's rate.
            parts.append(part)
    res = {k: np.concatenate([p[k] for p in parts]) for k in _RESULT_ARRAYS}
    steps_run = max(int(p["steps_run"]) for p in parts)
    seconds = sum(float(p["seconds"]) for p in parts) - earlier
    return OIPResult(snapshot_steps=config.snapshots, seconds=seconds, steps_run=steps_run, **res), earlier
