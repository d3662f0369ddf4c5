"""Values held in another axis order while a jaxpr is evaluated, so that layout transposes cancel.

torchax computes in PyTorch's NCHW; `jaxoip.models.im2col` computes its convolutions in NHWC. Transposing
back and forth around every layer costs more than the layers' matmuls in a CPU search (BENCHMARKS.md). The
interpreter of `jaxoip.models.im2col` therefore keeps a transposed value as `Laid(phys, perm)`, the array
`jnp.transpose(phys, perm)` not yet computed: a transpose of a `Laid` value composes the permutations (two
that cancel compute nothing), and the operations that do not care about the order of their axes run on
`phys` directly, with their per-axis parameters permuted: elementwise operations (operands of the same rank
or scalars), reductions over axes, pads, slices, window reductions, and custom-JVP functions of elementwise
operations (PyTorch's and JAX's ReLU), whose primal and JVP are evaluated through the same rules. Any other
operation gets the array itself (`materialize`), so the result is always that of the plain evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Shaped


class Laid(NamedTuple):
    """The array `jnp.transpose(phys, perm)`, held as `phys`."""

    phys: Shaped[Array, "*dims"]
    perm: tuple[int, ...]


def lay(phys, perm) -> Shaped[Array, "*dims"] | Laid:
    """`jnp.transpose(phys, perm)`, lazily (`phys` itself for the identity)."""
    perm = tuple(int(p) for p in perm)
    return phys if perm == tuple(range(len(perm))) else Laid(phys, perm)


def transposed(value, perm) -> Shaped[Array, "*dims"] | Laid:
    """`jnp.transpose(value, perm)` of an array or a `Laid` value, lazily: permutations compose."""
    if isinstance(value, Laid):
        return lay(value.phys, tuple(value.perm[i] for i in perm))
    return lay(value, perm)


def materialize(value) -> Shaped[Array, "*dims"]:
    """The array a value stands for."""
    return jnp.transpose(value.phys, value.perm) if isinstance(value, Laid) else value


def physical(value, perm) -> Shaped[Array, "*dims"]:
    """The array X with `jnp.transpose(X, perm)` equal to `value` (no work when `value` is held so)."""
    return materialize(transposed(value, np.argsort(perm)))


def on_axes(items, perm):
    """Per-axis parameters of the array meant, in the order of the axes of `phys`."""
    out = [None] * len(perm)
    for i, p in enumerate(perm):
        out[p] = items[i]
    return tuple(out)


def _ndim(value) -> int:
    return len(value.perm) if isinstance(value, Laid) else np.ndim(value)


def _common_perm(invals, out_ndims) -> tuple[int, ...] | None:
    """The one permutation of the `Laid` operands, where every operand and result has its rank (or is a
    scalar operand); None otherwise."""
    perms = {v.perm for v in invals if isinstance(v, Laid)}
    if len(perms) != 1:
        return None
    (perm,) = perms
    if any(_ndim(v) not in (0, len(perm)) for v in invals) or any(n != len(perm) for n in out_ndims):
        return None
    return perm


ELEMENTWISE = frozenset(
    "add add_any sub mul div rem pow max min atan2 nextafter and or xor not eq ne lt le gt ge select_n clamp neg "
    "sign floor ceil round is_finite abs exp exp2 log log1p expm1 tanh logistic sin cos tan asin acos atan sinh "
    "cosh asinh acosh atanh sqrt rsqrt cbrt integer_pow square erf erfc erf_inv lgamma digamma "
    "convert_element_type copy copy_p real imag reduce_precision".split()
)


def _elementwise(eqn, invals, evaluate):
    perm = _common_perm(invals, [v.aval.ndim for v in eqn.outvars])
    if perm is None:
        return None
    args = [v if _ndim(v) == 0 else physical(v, perm) for v in invals]
    out = eqn.primitive.bind(*args, **eqn.params)
    return [lay(o, perm) for o in (out if eqn.primitive.multiple_results else [out])]


def _reduce(eqn, invals, evaluate):
    (value,) = invals
    axes = tuple(eqn.params["axes"])
    phys_axes = tuple(sorted(value.perm[a] for a in axes))
    out = eqn.primitive.bind(value.phys, **{**eqn.params, "axes": phys_axes})
    kept = [value.perm[i] for i in range(len(value.perm)) if i not in axes]
    return [lay(out, np.argsort(np.argsort(kept)))]


def _pad(eqn, invals, evaluate):
    value, fill = invals
    if not isinstance(value, Laid) or _ndim(fill) != 0:
        return None
    config = on_axes(eqn.params["padding_config"], value.perm)
    return [lay(eqn.primitive.bind(value.phys, fill, padding_config=config), value.perm)]


def _slice(eqn, invals, evaluate):
    (value,) = invals
    params = {k: v if v is None else on_axes(v, value.perm) for k, v in eqn.params.items()}
    return [lay(eqn.primitive.bind(value.phys, **params), value.perm)]


def _reduce_window(eqn, invals, evaluate):
    (value,) = invals
    params = dict(eqn.params)
    for key in ("window_dimensions", "window_strides", "padding", "base_dilation", "window_dilation"):
        params[key] = on_axes(params[key], value.perm)
    return [lay(eqn.primitive.bind(value.phys, **params), value.perm)]


def _custom_jvp(eqn, invals, evaluate):
    """A custom-JVP function of arrays of one rank (an activation), on `phys`: its primal and its JVP are
    evaluated by `evaluate` (the interpreter) on `Laid` values, so their elementwise operations run in place."""
    params = eqn.params
    perm = _common_perm(invals, [v.aval.ndim for v in eqn.outvars])
    floating = all(jnp.issubdtype(v.aval.dtype, jnp.floating) for v in (*eqn.invars, *eqn.outvars))
    if perm is None or params.get("num_consts", 1) or not floating or any(_ndim(v) == 0 for v in invals):
        return None
    if "jvp_jaxpr_fun" not in params:  # Another JAX's spelling: the function as traced, on the arrays meant.
        return None
    call, jvp_jaxpr_fun = params["call_jaxpr"], params["jvp_jaxpr_fun"]

    def physicals(values):
        return [physical(v, perm) for v in values]

    @jax.custom_jvp
    def fn(*xs):
        return physicals(evaluate(call.jaxpr, call.consts, *[lay(x, perm) for x in xs]))

    @fn.defjvp
    def fn_jvp(primals, tangents):
        jaxpr, consts, out_zeros = jvp_jaxpr_fun.call_wrapped(*[False] * len(primals))
        outs = physicals(evaluate(jaxpr, consts, *[lay(x, perm) for x in (*primals, *tangents)]))
        out_primals, nonzero = outs[: len(out_zeros)], iter(outs[len(out_zeros) :])
        out_tangents = [jnp.zeros_like(p) if zero else next(nonzero) for p, zero in zip(out_primals, out_zeros)]
        return out_primals, out_tangents

    return [lay(o, perm) for o in fn(*physicals(invals))]


# Primitive name -> rule(eqn, invals with at least one `Laid`, evaluate) -> outvals, or None: not handled.
RULES: dict[str, Callable] = {
    **{name: _elementwise for name in ELEMENTWISE},
    **{name: _reduce for name in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or")},
    "pad": _pad,
    "slice": _slice,
    **{name: _reduce_window for name in ("reduce_window_max", "reduce_window_min", "reduce_window_sum")},
    "custom_jvp_call": _custom_jvp,
}
