"""The numerics contract: one explicit precision for every compiled computation, and one way to make keys.

Precisions:
- ``highest``: true float32 matmuls (the default); the same results on CPU and GPU up to rounding.
- ``tf32``: the backend's fast float32 (TF32 tensor cores on NVIDIA GPUs; plain float32 on a CPU).
- ``bf16``: matmul inputs in bfloat16, accumulation, image state and everything else in float32.

Every jitted function of the package takes ``precision`` as a static argument and traces its body
inside ``precision_scope(precision)``; the model's matmuls read the precision from that scope at trace
time. Outside any scope (an eager call from a notebook) the precision is ``highest``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Literal

import numpy as np

from jaxoip.errors import JaxoipError

if TYPE_CHECKING:  # JAX is imported where it is used: a command checks its arguments before JAX starts.
    import jax

Precision = Literal["highest", "tf32", "bf16"]
PRECISIONS: tuple[str, ...] = ("highest", "tf32", "bf16")
DEFAULT_PRECISION: Precision = "highest"
PRECISION_HELP = (
    "highest (true float32, same results on CPU and GPU), tf32 (the backend's fast float32) or bf16 "
    "(bfloat16 inputs, float32 accumulation)"
)

_scope = threading.local()


# XLA's backend optimization level for programs that are cheap to run and slow to compile (the start images:
# cubic resizes of random grids, vmapped; the shift-invariant similarities: small FFTs). Level 1 compiles them
# 1.5-4x faster than XLA's default 2, runs them as fast, and gives the same bits (tests/oip/test_noise.py checks
# every recipe, tests/oip/test_oip_similarity.py the similarities); the search and the passes keep XLA's default.
FAST_COMPILE = {"xla_backend_optimization_level": 1}


def check_precision(precision: str) -> Precision:
    """`precision` if it is one of PRECISIONS; a one-line error otherwise."""
    if precision not in PRECISIONS:
        raise JaxoipError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision  # type: ignore[return-value]


@contextlib.contextmanager
def precision_scope(precision: Precision):
    """Matmuls traced inside this block use `precision` (enter it inside the jitted function)."""
    import jax

    check_precision(precision)
    previous = getattr(_scope, "precision", None)
    _scope.precision = precision
    try:
        with jax.default_matmul_precision("highest" if precision == "highest" else "default"):
            yield
    finally:
        _scope.precision = previous


def current_precision() -> Precision:
    return getattr(_scope, "precision", None) or DEFAULT_PRECISION


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x @ w` at the current precision; float32 result."""
    import jax
    import jax.numpy as jnp

    p = current_precision()
    if p == "bf16":
        return jnp.matmul(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    lax_precision = jax.lax.Precision.HIGHEST if p == "highest" else jax.lax.Precision.DEFAULT
    return jnp.matmul(x, w, precision=lax_precision)


def check_seed(seed) -> int:
    """An integer seed (Python or NumPy) in 0..2**32-1, as a Python int; a one-line error otherwise."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise JaxoipError(f"a seed must be an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**32:
        raise JaxoipError(f"a seed must be an integer in 0..2**32-1, got {int(seed)}")
    return int(seed)


def as_key(seed) -> jax.Array:
    """A typed PRNG key from an integer seed (Python or NumPy) or an existing key."""
    import jax
    import jax.numpy as jnp

    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return jax.random.key(check_seed(seed))
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return seed
    raise JaxoipError(f"a seed must be an integer or a PRNG key, got {type(seed).__name__}")


POLL_SECONDS = 0.02  # How often a waiting main thread looks up: a Ctrl-C lands within this.


def wait_ready(tree) -> None:
    """Waits for the arrays of `tree` so that a Ctrl-C lands within a fraction of a second: a helper thread
    blocks on them (releasing the interpreter's lock) while this one waits on an event in slices of
    `POLL_SECONDS`, and wakes as soon as they are ready (polling `is_ready` overshot each wait by half a slice).

    A compiled program runs asynchronously; blocking on its result (`np.asarray`, `jax.device_get`) in this
    thread would hold the interrupt until it ends, minutes for a large chunk on a CPU.
    """
    import jax

    leaves = [leaf for leaf in jax.tree.leaves(tree) if isinstance(leaf, jax.Array) and not leaf.is_ready()]
    if not leaves:
        return
    done = threading.Event()

    def block():
        try:
            jax.block_until_ready(leaves)
        except Exception:  # noqa: BLE001 - the caller's own read of the arrays raises it, in this thread.
            pass
        done.set()

    threading.Thread(target=block, name="jaxoip-wait", daemon=True).start()
    while not done.wait(POLL_SECONDS):
        pass


def fetch(tree):
    """`tree`'s arrays as NumPy arrays, waited for as `wait_ready` does (not in one blocking C++ call)."""
    import jax

    wait_ready(tree)
    return jax.tree.map(np.asarray, jax.device_get(tree))
