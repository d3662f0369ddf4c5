"""Field checks shared by the config dataclasses: one clear `JaxoipError` per bad value."""

from __future__ import annotations

import math
import numbers

import numpy as np

from jaxoip.errors import DataError, JaxoipError


def check_int(name: str, value, lo: int | None = None, hi: int | None = None, optional: bool = False):
    """`value` is an integer (not a bool) in [lo, hi]; None passes when `optional`."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise JaxoipError(f"{name} must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise JaxoipError(f"{name} must be at least {lo}, got {value}")
    if hi is not None and value > hi:
        raise JaxoipError(f"{name} must be at most {hi}, got {value}")


def check_float(
    name: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
):
    """`value` is a finite real number in the interval from lo to hi (open ends where asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise JaxoipError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise JaxoipError(f"{name} must be {'above' if lo_open else 'at least'} {lo}, got {value}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise JaxoipError(f"{name} must be {'below' if hi_open else 'at most'} {hi}, got {value}")


# Bounds of integers that become JAX or NumPy values: seeds are 32-bit (`numerics.check_seed`), as both
# `jax.random.key` (int64) and `np.random.default_rng` (no negatives) take them; step counts are int32.
SEED_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1


def check_finite_images(what: str, images) -> np.ndarray:
    """`images` as a NumPy array, checked on the host (before any compiled pass): a `DataError` naming how
    many hold NaN or infinite pixels. Integer images (MNIST's uint8) are finite by construction."""
    try:
        x = np.asarray(images)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be numeric pixels, got {type(images).__name__}") from None
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{what} must be numeric pixels, got {x.dtype} values")
    if np.issubdtype(x.dtype, np.inexact):
        finite = np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1) if x.ndim > 1 else np.isfinite(x)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise DataError(
                f"{what} hold NaN or infinite pixels ({bad.size} of {finite.size} images, the first at index "
                f"{int(bad[0])})"
            )
    return x


def check_type(name: str, value, cls: type | tuple[type, ...], hint: str = "", error: type = JaxoipError):
    """`value` if it is an instance of `cls`; else one line naming what was expected and what came."""
    if not isinstance(value, cls):
        want = " or ".join(c.__name__ for c in cls) if isinstance(cls, tuple) else cls.__name__
        raise error(f"{name} must be a {want}{hint}, got {type(value).__name__}")
    return value
