"""One fast path for every framework: any JAX function's convolutions run as im2col matmuls, and its
tiling max poolings as a reshape and max.

XLA:CPU runs the gradient convolutions of `lax.conv_general_dilated` inside `lax.while_loop` loops (the OIP
search) over 10x slower than a matmul over shifted slices (jax-ml/jax#12868); jaxoip's own CNN therefore
writes its convolutions as im2col (`jaxoip.models.cnn.conv2d`). Keras's JAX backend, torchax and Flax's
`nnx.Conv` all emit `conv_general_dilated`. `im2col_convs(fn)` traces `fn` to a jaxpr once per call site
and evaluates it with every 2-D convolution it can express (no input dilation, no batch groups; feature
groups of 1, or one per input channel: depthwise) replaced by slices and one matmul (a multiply-add for
depthwise), at the precision in scope (`jaxoip.numerics`), and every max pooling whose windows tile its
input by a reshape and max, as `jaxoip.models.cnn.max_pool`. The convolutions compute in NHWC whatever the
layout asked for; the interpreter holds transposed values lazily (`jaxoip.models.layout`), so that a network
computing in NCHW (torchax) runs in NHWC from its input transpose to its output's, with no transposes around
its layers. Everything else is bound as traced, so the result, its gradient and its vmap are those of `fn`,
up to float rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend import core

from jaxoip import numerics
from jaxoip.models.layout import RULES, Laid, lay, materialize, on_axes, transposed

CALLS = ("pjit", "jit", "closed_call", "core_call", "remat", "checkpoint")


def _subjaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, core.Jaxpr):
                yield item


def has_conv(jaxpr: core.Jaxpr) -> bool:
    """Whether `jaxpr` (or a jaxpr inside it) holds a convolution or pooling that `eval_jaxpr` rewrites."""
    return any(eqn.primitive.name in REWRITES or any(has_conv(j) for j in _subjaxprs(eqn.params)) for eqn in jaxpr.eqns)


def _tiling(params: dict, shape) -> bool:
    """A max pooling whose windows tile the input (stride = window, no padding or dilation)."""
    return (
        tuple(params["window_dimensions"]) == tuple(params["window_strides"])
        and all(lo == hi == 0 for lo, hi in params["padding"])
        and all(d == 1 for d in (*params["base_dilation"], *params["window_dilation"]))
    )


def _max_pool(x, *, window_dimensions, **_):
    """`max_pool` of an array or a `Laid` value, on its held array."""
    if isinstance(x, Laid):
        return lay(max_pool(x.phys, window_dimensions=on_axes(window_dimensions, x.perm)), x.perm)
    return max_pool(x, window_dimensions=window_dimensions)


def max_pool(x, *, window_dimensions, **_):
    """Max pooling over tiling windows as a reshape and max (floor mode): the same values as
    `lax.reduce_window`, with a gradient that avoids XLA's select-and-scatter (about 2x faster on a CPU)."""
    cut = tuple(slice(0, (n // w) * w) for n, w in zip(x.shape, window_dimensions))
    split = [d for n, w in zip(x.shape, window_dimensions) for d in (n // w, w)]
    return x[cut].reshape(split).max(axis=tuple(range(1, 2 * x.ndim, 2)))


def _convertible(params: dict, lhs_shape, rhs_shape) -> bool:
    lhs_spec, rhs_spec, _ = params["dimension_numbers"]
    groups, channels = params["feature_group_count"], lhs_shape[lhs_spec[1]]
    depthwise = groups == channels and rhs_shape[rhs_spec[1]] == 1 and rhs_shape[rhs_spec[0]] == channels
    return (
        len(lhs_shape) == 4
        and all(d == 1 for d in params["lhs_dilation"])
        and params["batch_group_count"] == 1
        and (groups == 1 or depthwise)
    )


def conv(lhs, rhs, **params):
    """`lax.conv_general_dilated` of 2-D images as shifted slices and one matmul (or, depthwise, a
    multiply-add), in the layouts the dimension numbers give."""
    return materialize(_conv(lhs, rhs, **params))


def _conv(lhs, rhs, *, window_strides, padding, rhs_dilation, dimension_numbers, feature_group_count, **_):
    """`conv` of arrays or `Laid` values, computed in NHWC; the result `Laid` in the layout asked for, so
    that a transpose to NHWC after it (or in the next convolution) cancels."""
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    x = materialize(transposed(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1])))  # N, H, W, C
    k = materialize(transposed(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0])))  # kh, kw, I, O
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)])
    kh, kw, c_in, c_out = k.shape
    (sh, sw), (dh, dw) = window_strides, rhs_dilation
    ho = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
    slices = [
        x[:, a * dh : a * dh + (ho - 1) * sh + 1 : sh, b * dw : b * dw + (wo - 1) * sw + 1 : sw, :]
        for a in range(kh)
        for b in range(kw)
    ]
    if feature_group_count == 1:
        out = numerics.matmul(jnp.concatenate(slices, axis=-1), k.reshape(kh * kw * c_in, c_out))
    else:  # Depthwise: one filter per input channel.
        out = sum(s * k[a, b, 0][None, None, None, :] for s, (a, b) in zip(slices, _taps(kh, kw)))
    axes = [0, 0, 0, 0]
    axes[out_spec[0]], axes[out_spec[2]], axes[out_spec[3]], axes[out_spec[1]] = 0, 1, 2, 3
    return lay(out, axes)


# Primitive name -> (whether an equation can be rewritten, its rewrite of arrays or `Laid` values).
REWRITES = {"conv_general_dilated": (_convertible, _conv), "reduce_window_max": (_tiling, _max_pool)}


def _taps(kh: int, kw: int):
    return [(a, b) for a in range(kh) for b in range(kw)]


def eval_jaxpr(jaxpr: core.Jaxpr, consts, *args):
    """Evaluates `jaxpr` with its convertible convolutions as im2col; calls holding convolutions are inlined."""
    return [materialize(v) for v in _evaluate(jaxpr, consts, *args)]


def _evaluate(jaxpr: core.Jaxpr, consts, *args):
    """`eval_jaxpr` with values that may be held transposed (`jaxoip.models.layout`): transposes are
    lazy, operations that do not care about axis order run on the held arrays, the others get the arrays
    meant. Returns values that may be `Laid`."""
    env = {}

    def read(v):
        return v.val if isinstance(v, core.Literal) else env[v]

    for v, value in zip(jaxpr.constvars, consts):
        env[v] = value
    for v, value in zip(jaxpr.invars, args):
        env[v] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        laid = any(isinstance(v, Laid) for v in invals)
        outvals = None
        if name == "transpose":
            outvals = [transposed(invals[0], eqn.params["permutation"])]
        elif name in REWRITES and REWRITES[name][0](eqn.params, *(v.aval.shape for v in eqn.invars)):
            outvals = [REWRITES[name][1](*invals, **eqn.params)]
        elif name in CALLS and "jaxpr" in eqn.params and (laid or has_conv(_inner(eqn.params["jaxpr"]))):
            inner = eqn.params["jaxpr"]
            outvals = _evaluate(_inner(inner), getattr(inner, "consts", ()), *invals)
        elif laid and name in RULES:
            with eqn.ctx.manager:
                outvals = RULES[name](eqn, invals, _evaluate)
        if outvals is None:
            invals = [materialize(v) for v in invals]
            with eqn.ctx.manager:
                outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outvals = outvals if eqn.primitive.multiple_results else [outvals]
        for v, value in zip(eqn.outvars, outvals):
            if not isinstance(v, core.DropVar):
                env[v] = value
    return [read(v) for v in jaxpr.outvars]


def _inner(jaxpr) -> core.Jaxpr:
    return jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr


def im2col_convs(fn):
    """`fn` (a function of arrays and pytrees of arrays) with its convolutions as im2col matmuls; `fn`
    itself where it has none."""

    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        if not has_conv(closed.jaxpr):
            return fn(*args)
        out = eval_jaxpr(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped


def use_im2col(setting: bool | None) -> bool:
    """Whether a network's convolutions run as im2col: `setting`, or by default on a CPU only (measured
    there; on accelerators the framework's own convolutions stay)."""
    return jax.default_backend() == "cpu" if setting is None else bool(setting)
