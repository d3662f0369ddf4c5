"""The search's update rule as Optax transformations (`jaxoip.oip.optim`): the study's step to the bit, Adam as
an ascent with its state carried; no data needed."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from planted import planted_dense_model, ring_pattern

from jaxoip.cli import scan_all_maps as scan_cmd
from jaxoip.errors import JaxoipError
from jaxoip.oip.noise import initial_images, start_keys
from jaxoip.oip.optim import make_optimizer
from jaxoip.oip.search import OIPConfig, search_oips


def _gradients(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    p, g = jax.random.normal(jax.random.key(seed), (2, 3, 5, 5, 1))
    return p, g * jnp.array([1.0, 0.1, 1e3])[:, None, None, None]  # Gradients of very different sizes.


def test_the_normalized_step_is_the_studys_to_the_bit():
    p, g = _gradients()
    opt = make_optimizer("normalized", 0.01, 1e-5)

    @jax.jit
    def ours(p, g):
        updates, _ = opt.update(g, opt.init(p), p)
        return optax.apply_updates(p, updates)

    @jax.jit
    def study(p, g):
        return p + 0.01 * jax.vmap(lambda gi: gi / (jnp.sqrt(jnp.mean(gi**2)) + 1e-5))(g)

    np.testing.assert_array_equal(ours(p, g), study(p, g))
    # Per image: each one's step has RMS 0.01 (up to grad_eps), whatever the size of the others' gradients.
    step = np.asarray(ours(p, g) - p)
    np.testing.assert_allclose(np.sqrt((step**2).mean(axis=(1, 2, 3))), 0.01, rtol=1e-3)
    assert opt.init(p) == (optax.EmptyState(), optax.EmptyState())  # No state to carry.


def test_adam_ascends_with_its_state_carried():
    """Three steps of ours on the objective's gradient g are exactly optax.adam's steps on the loss -g."""
    p, _ = _gradients()
    ours, theirs = make_optimizer("adam", 0.05, 1e-5), optax.adam(0.05)
    s_ours, s_theirs = ours.init(p), theirs.init(p)
    for seed in range(3):
        g = _gradients(seed + 1)[1]
        u_ours, s_ours = ours.update(g, s_ours, p)
        u_theirs, s_theirs = theirs.update(-g, s_theirs, p)
        np.testing.assert_array_equal(u_ours, u_theirs)
    assert int(s_ours[0].count) == 3


def test_adam_search_runs_and_differs_from_the_study_step():
    trained = planted_dense_model()
    x0 = np.asarray(initial_images(start_keys(0, [0], 2).reshape(-1), ["fine"]))
    maps = np.zeros(2, np.int32)
    study = search_oips(trained.model, "Dense_1", maps, x0, OIPConfig(steps=40, epsilon=0.05))
    adam = search_oips(trained.model, "Dense_1", maps, x0, OIPConfig(steps=40, epsilon=0.05, optimizer="adam"))
    assert np.isfinite(adam.images).all() and not np.array_equal(adam.images, study.images)
    assert np.all(adam.traces[:, -1] > adam.traces[:, 0])  # An ascent: the objective rises.
    ring = np.asarray(ring_pattern()).reshape(-1)
    assert np.all(adam.images.reshape(2, -1) @ ring / ring.size > 0.5)  # Towards the planted optimum.


def test_the_optimizer_is_a_flag_and_checked():
    assert scan_cmd.oip_config(scan_cmd._parser().parse_args(["--optimizer", "adam"])).optimizer == "adam"
    assert OIPConfig().optimizer == "normalized"
    with pytest.raises(JaxoipError, match="unknown optimizer 'sgd'; choose from normalized, adam"):
        OIPConfig(optimizer="sgd")
