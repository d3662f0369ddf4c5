"""`jaxoip.models.im2col`: any JAX function's convolutions and tiling max poolings rewritten, with the same
values and gradients, in every layout Keras, Flax and torchax emit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxoip.models.im2col import im2col_convs
from jaxoip.numerics import precision_scope

CASES = [  # layouts, feature groups, strides, kernel dilation, padding, in and out channels
    (("NHWC", "HWIO", "NHWC"), 1, (1, 1), (1, 1), "SAME", 4, 3),
    (("NCHW", "OIHW", "NCHW"), 1, (2, 2), (1, 1), ((1, 2), (0, 1)), 4, 5),
    (("NHWC", "HWIO", "NHWC"), 6, (1, 1), (2, 2), "VALID", 6, 6),  # Depthwise, dilated.
    (("NCHW", "OIHW", "NCHW"), 6, (2, 1), (1, 1), ((1, 1), (1, 1)), 6, 6),
]


def _primitives(fn, *args) -> set[str]:
    names = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return names


@pytest.mark.parametrize(("layout", "groups", "strides", "dilation", "padding", "c_in", "c_out"), CASES)
def test_convolutions_equal_lax_in_value_and_gradient(layout, groups, strides, dilation, padding, c_in, c_out):
    rng = np.random.default_rng(0)
    nhwc = layout[0] == "NHWC"
    x = jnp.asarray(rng.normal(size=(2, 9, 10, c_in) if nhwc else (2, c_in, 9, 10)), jnp.float32)
    k_shape = (3, 3, c_in // groups, c_out) if nhwc else (c_out, c_in // groups, 3, 3)
    k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)

    def f(x, k):
        y = jax.lax.conv_general_dilated(
            x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=layout, feature_group_count=groups
        )
        return jnp.tanh(y)

    with precision_scope("highest"):
        want, got = jax.jit(f)(x, k), jax.jit(im2col_convs(f))(x, k)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        grads = [jax.jit(jax.grad(lambda x, k, g=g: g(x, k).sum(), argnums=(0, 1)))(x, k) for g in (f, im2col_convs(f))]
        for a, b in zip(*grads):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    assert "conv_general_dilated" in _primitives(f, x, k)
    assert "conv_general_dilated" not in _primitives(im2col_convs(f), x, k)


def test_tiling_max_pooling_is_reshaped_and_others_stay():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 9, 3)), jnp.float32)
    tiling = lambda x: nnx.max_pool(x, (2, 2), (2, 2))  # noqa: E731
    overlapping = lambda x: nnx.max_pool(x, (3, 3), (2, 2))  # noqa: E731
    for pool, rewritten in [(tiling, True), (overlapping, False)]:
        np.testing.assert_array_equal(im2col_convs(pool)(x), pool(x))
        grads = [jax.grad(lambda x, p=p: (p(x) ** 2).sum())(x) for p in (pool, im2col_convs(pool))]
        np.testing.assert_allclose(grads[1], grads[0], rtol=1e-6)
        assert ("reduce_window_max" not in _primitives(im2col_convs(pool), x)) == rewritten


def test_a_flax_module_under_jit_and_vmap():
    conv = nnx.Conv(3, 5, (3, 3), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(conv)
    f = lambda state, x: nnx.merge(graphdef, state)(x).mean()  # noqa: E731
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 8, 8, 3)), jnp.float32)
    with precision_scope("highest"):
        want = jax.jit(jax.vmap(jax.grad(f, argnums=1), in_axes=(None, 0)))(state, x[:, None])
        got = jax.jit(jax.vmap(jax.grad(im2col_convs(f), argnums=1), in_axes=(None, 0)))(state, x[:, None])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_function_without_convolutions_is_itself():
    f = lambda x: jnp.sin(x).sum()  # noqa: E731
    assert im2col_convs(f)(jnp.ones(3)) == f(jnp.ones(3))


def _activation_transposes(fn, *args, batch: int) -> int:
    """Transposes in the jaxpr of `fn` of arrays with `batch` leading (activations), their results used."""
    count = 0

    def walk(jaxpr):
        nonlocal count
        read = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
        for eqn in jaxpr.eqns:
            shape = eqn.invars[0].aval.shape if eqn.invars else ()
            used = id(eqn.outvars[0]) in read
            count += used and eqn.primitive.name == "transpose" and len(shape) > 1 and shape[0] == batch
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return count


@jax.custom_jvp
def _odd_activation(x):
    return jnp.where(x > 0, x, 0.1 * x)


@_odd_activation.defjvp
def _odd_activation_jvp(primals, tangents):  # Deliberately not the derivative: the rule must be kept.
    (x,), (t,) = primals, tangents
    return _odd_activation(x), 3.0 * jnp.where(x > 0, t, -t) + jnp.cos(x) * t


def _nchw_network(x, k1, k2, kd, scale):
    """A torch-like network in NCHW between two layout transposes: convolutions (stride, padding, dilation,
    depthwise), biases and batch norm of shape (1, C, 1, 1), custom-JVP activations, tiling and overlapping
    max poolings, an average pooling, a pad, a slice, a mean over H and W and a flatten."""
    dn = ("NCHW", "OIHW", "NCHW")
    conv = jax.lax.conv_general_dilated
    y = jnp.transpose(x, (0, 3, 1, 2))
    y = conv(y, k1, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn) + scale.reshape(1, -1, 1, 1)
    y = jax.nn.relu((y - 0.1) / jnp.sqrt(scale.reshape(1, -1, 1, 1) ** 2 + 1e-5))
    y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")  # Tiling.
    y = _odd_activation(conv(y, kd, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=dn, feature_group_count=6))
    y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 1, 1), ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = jax.nn.gelu(conv(jnp.pad(y, ((0, 0), (0, 0), (1, 0), (0, 1))), k2, (2, 1), "VALID", dimension_numbers=dn))
    pooled = jax.lax.reduce_window(y, 0.0, jax.lax.add, (1, 1, 2, 2), (1, 1, 1, 1), "VALID")[:, :, 1:, :-1]
    features = jnp.concatenate([y.mean(axis=(2, 3)), pooled.reshape(pooled.shape[0], -1)], axis=1)
    return jnp.transpose(y, (0, 2, 3, 1)), features


def test_an_nchw_network_runs_without_layout_transposes_and_equals_lax():
    rng = np.random.default_rng(3)
    arrays = [rng.normal(size=s) for s in [(2, 12, 11, 3), (6, 3, 3, 3), (5, 6, 3, 3), (6, 1, 3, 3), (6,)]]
    args = [jnp.asarray(a * scale, jnp.float32) for a, scale in zip(arrays, [1.0, 0.3, 0.2, 0.3, 1.0])]

    def loss(f):  # Weighted sums of the outputs: a well-conditioned loss, so that float32 rounding stays small.
        return lambda *a: sum(jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))) for out in f(*a))

    with precision_scope("highest"):
        for want, got in zip(jax.jit(_nchw_network)(*args), jax.jit(im2col_convs(_nchw_network))(*args)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        grads = [
            jax.jit(jax.grad(loss(f), argnums=(0, 1, 2, 3, 4)))(*args)
            for f in (_nchw_network, im2col_convs(_nchw_network))
        ]
        for a, b in zip(*grads):  # Within 1e-5 of each gradient's scale (float32 rounding of sums).
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max()))
    # The convolutions run in NHWC; of the transposes to and from it, only the flatten's (which needs NCHW's
    # order) stays, forward and backward.
    assert _activation_transposes(jax.grad(loss(im2col_convs(_nchw_network))), *args, batch=2) == 2
