"""Rematerialization for any network: its forward pass cut into segments, each under `jax.checkpoint`.

The backward pass of a deep network keeps every layer's residuals alive at once; that, not the weights, is
what limits the OIP search's chunk on an ImageNet-sized network. `segmented_checkpoint(fn)` traces `fn` to a
jaxpr once per call site (calls inlined, so a Keras graph, a torch module through torchax and the built-in
CNN all become one flat list of operations), cuts it into about sqrt(n) segments of equal length, and runs
each segment under `jax.checkpoint`: the backward pass keeps only the values that cross a segment boundary
and recomputes one segment's residuals at a time (Chen et al. 2016, "Training deep nets with sublinear
memory cost"). The result and its gradient are `fn`'s; the operations run are the same, so their values
are too, up to the float rounding of XLA fusing them differently.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core

from jaxoip.models.im2col import CALLS


def _read(env: dict, v):
    return v.val if isinstance(v, core.Literal) else env[v]


def _bind(eqn, invals):
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
    return out if eqn.primitive.multiple_results else [out]


def _inlined(jaxpr: core.Jaxpr, consts, *args):
    """`eval_jaxpr` with every call (jit, closed_call, checkpoint) evaluated inline, so that tracing it
    gives one flat jaxpr."""
    env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [_read(env, v) for v in eqn.invars]
        inner = eqn.params.get("jaxpr") if eqn.primitive.name in CALLS else None
        if inner is not None:
            closed = isinstance(inner, core.ClosedJaxpr)
            outvals = _inlined(inner.jaxpr if closed else inner, inner.consts if closed else (), *invals)
        else:
            outvals = _bind(eqn, invals)
        for v, value in zip(eqn.outvars, outvals):
            if not isinstance(v, core.DropVar):
                env[v] = value
    return [_read(env, v) for v in jaxpr.outvars]


def segments(n_eqns: int, count: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) of `count` (default: about sqrt(n_eqns)) segments of equal length covering n_eqns."""
    count = max(1, min(n_eqns, count or math.ceil(math.sqrt(n_eqns))))
    bounds = [round(i * n_eqns / count) for i in range(count + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _run_segments(jaxpr: core.Jaxpr, consts, args, count: int | None):
    env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
    eqns = jaxpr.eqns
    # Where each variable is last read (the outputs: after every equation).
    last = {}
    for i, eqn in enumerate(eqns):
        for v in eqn.invars:
            if not isinstance(v, core.Literal):
                last[v] = i
    for v in jaxpr.outvars:
        if not isinstance(v, core.Literal):
            last[v] = len(eqns)
    for a, b in segments(len(eqns), count):
        part = eqns[a:b]
        defined = {v for eqn in part for v in eqn.outvars}
        ins = list(dict.fromkeys(v for eqn in part for v in eqn.invars if not isinstance(v, core.Literal)))
        ins = [v for v in ins if v not in defined]
        outs = [v for v in dict.fromkeys(v for eqn in part for v in eqn.outvars) if last.get(v, -1) >= b]

        def run(*vals, part=part, ins=ins, outs=outs):
            local = dict(zip(ins, vals))
            for eqn in part:
                for v, value in zip(eqn.outvars, _bind(eqn, [_read(local, u) for u in eqn.invars])):
                    if not isinstance(v, core.DropVar):
                        local[v] = value
            return [local[v] for v in outs]

        env.update(zip(outs, jax.checkpoint(run)(*[env[v] for v in ins])))
    return [_read(env, v) for v in jaxpr.outvars]


def segmented_checkpoint(fn, count: int | None = None):
    """`fn` (a function of arrays and pytrees of arrays) with its forward pass in `count` segments (default:
    about the square root of its operation count), each rematerialized in the backward pass."""

    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        flat = jax.make_jaxpr(lambda *a: _inlined(closed.jaxpr, closed.consts, *a))(*jax.tree.leaves(args))
        out = _run_segments(flat.jaxpr, flat.consts, jax.tree.leaves(args), count)
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped
