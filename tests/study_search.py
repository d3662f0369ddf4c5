"""The study's plain ascent exactly as jaxoip ran it before the toolkit (issue 10), as a reference:
`OIPConfig(wake=False)` must give bit-identical results."""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxoip.models.cnn import map_activation
from jaxoip.oip.noise import standardize_image


def make_objectives(graphdef: nnx.GraphDef, layer_name: str, node: tuple[int, int] | None = None):
    """Pure (params, images (N,H,W,1), map_indices (N,)) -> objectives (N,), one selected map per image."""

    def objectives(params, x, maps):
        fmap = map_activation(nnx.merge(graphdef, params), x, layer_name, maps)  # (N, H, W)
        return fmap[:, node[0], node[1]] if node is not None else fmap.mean(axis=(1, 2))

    return objectives


def make_study_search(graphdef: nnx.GraphDef, layer_name: str, cfg, node: tuple[int, int] | None = None):
    """Pure (params, images (N,H,W,1), map_indices (N,)) -> dict of results, for one chunk.

    Each loop iteration costs one forward and one backward pass: the objective of image x_t comes
    with its gradient, so the trace entry of step t - 1 is written one iteration late.
    """
    snaps = jnp.asarray(cfg.snapshots)
    objectives = make_objectives(graphdef, layer_name, node)

    # Images are independent, so the gradient of the sum is each image's own gradient.
    def total(p, x, m):
        obj = objectives(p, x, m)
        return obj.sum(), obj

    value_and_grad = jax.value_and_grad(total, argnums=1, has_aux=True)

    def rms_normalize(g):
        return g / (jnp.sqrt(jnp.mean(g**2)) + cfg.grad_eps)

    def record(t, obj, prev, trace, conv_step, active):
        """Bookkeeping for the objective `obj` reached after step t - 1 (t >= 1)."""
        rel = jnp.abs(obj - prev) / jnp.maximum(jnp.abs(obj), 1e-12)
        newly = (t >= 1) & (conv_step < 0) & (obj > 0) & (rel < cfg.conv_criterion)
        conv_step = jnp.where(newly, t - 1, conv_step)
        trace = jax.lax.dynamic_update_slice(trace, obj[:, None], (0, jnp.maximum(t - 1, 0)))
        return trace, conv_step, active | (obj > 0)

    def search(params, x0, maps):
        n = x0.shape[0]

        def body(state):
            t, x, prev, trace, snapshots, conv_step, active = state
            (_, obj), g = value_and_grad(params, x, maps)
            trace, conv_step, active = record(t, obj, prev, trace, conv_step, active)
            x = jax.vmap(standardize_image)(x + cfg.epsilon * jax.vmap(rms_normalize)(g))
            snapshots = jnp.where((snaps == t)[None, :, None, None, None], x[:, None], snapshots)
            return t + 1, x, obj, trace, snapshots, conv_step, active

        def cond(state):
            t, conv_step = state[0], state[5]
            go = t < cfg.steps
            return go & ~jnp.all(conv_step >= 0) if cfg.early_stop else go

        init = (
            jnp.asarray(0),
            x0,
            jnp.zeros((n,), jnp.float32),
            jnp.zeros((n, cfg.steps), jnp.float32),
            jnp.broadcast_to(x0[:, None], (n, len(cfg.snapshots), *x0.shape[1:])),
            jnp.full((n,), -1, jnp.int32),
            jnp.zeros((n,), bool),
        )
        t, x, prev, trace, snapshots, conv_step, active = jax.lax.while_loop(cond, body, init)
        obj = objectives(params, x, maps)  # After the last step.
        trace, conv_step, active = record(t, obj, prev, trace, conv_step, active)
        # After an early stop, the unfilled trace and snapshots hold the last values.
        trace = jnp.where(jnp.arange(cfg.steps)[None, :] < t, trace, obj[:, None])
        snapshots = jnp.where((snaps >= t)[None, :, None, None, None], x[:, None], snapshots)
        return dict(
            images=x,
            objective=obj,
            traces=trace,
            snapshots=snapshots,
            converged_step=conv_step,
            stayed_zero=~active,
            steps_run=t,
        )

    return search
