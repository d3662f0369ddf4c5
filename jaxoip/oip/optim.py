"""The search's update rule as an Optax transformation: the study's normalized-gradient step, or Adam.

The search maximizes, so the transformations here take the objective's gradient (the ascent direction) and
their updates are added to the parameters with `optax.apply_updates`: every rule is a direction
(`scale_by_image_rms`, `optax.scale_by_adam`) chained with `optax.scale(+epsilon)`, where a minimizing
optimizer such as `optax.adam` ends in `-learning_rate`.

- "normalized" (the study's): each image's gradient divided by its own RMS (over that image's axes, not the
  batch's) plus `grad_eps`, times `epsilon`: p + epsilon * g / (sqrt(mean(g**2)) + grad_eps), per image.
  Stateless; the same operations as the study's hand-written step, so the same bits.
- "adam": Adam's direction (Optax's defaults: b1 0.9, b2 0.999, eps 1e-8) times `epsilon`; its moments are
  carried through the search's loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxoip.oip.config import OPTIMIZERS


def scale_by_image_rms(eps: float) -> optax.GradientTransformation:
    """Divides each image's update by its root mean square plus `eps`: the batch axis (0) is vmapped, so an
    image's step does not depend on the others in its batch."""

    def normalize(g):
        return g / (jnp.sqrt(jnp.mean(g**2)) + eps)

    return optax.stateless(lambda updates, params: jax.tree.map(jax.vmap(normalize), updates))


def make_optimizer(name: str, epsilon: float, grad_eps: float) -> optax.GradientTransformation:
    """The update rule `name` (one of `OPTIMIZERS`, `OIPConfig.optimizer`) for an ascent of step size `epsilon`."""
    if name == "normalized":
        return optax.chain(scale_by_image_rms(grad_eps), optax.scale(epsilon))
    if name == "adam":
        return optax.chain(optax.scale_by_adam(), optax.scale(epsilon))
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
