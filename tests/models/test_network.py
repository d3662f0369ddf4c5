"""The Network protocol: layers resolved once into `Layer` handles, several layers from one pass (no MNIST)."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxoip.errors import LayerError
from jaxoip.models.cnn import ModelConfig, init_model
from jaxoip.models.network import Layer, find_layer
from jaxoip.models.spec import MAP_KINDS, LayerSpec, receptive_field


def _images(n=3, shape=(28, 28, 1), seed=0):
    return np.asarray(jax.random.normal(jax.random.key(seed), (n, *shape)), np.float32)


def test_layer_handles_of_the_study_network():
    net = init_model(ModelConfig(), 0)
    conv3 = net.layer("Conv2D_3")
    assert isinstance(conv3, Layer) and conv3.kind == "conv" and conv3.shape == (3, 3, 128)
    assert conv3.channels == 128 and conv3.is_maps and not conv3.is_vector and conv3.activation == "relu"
    assert net.layer("Max_Pool_2").activation == "relu"  # A pooling's is the convolution's below it.
    dense2 = net.layer("Dense_2")
    assert dense2.is_vector and dense2.activation == "softmax" and dense2.shape == (10,)
    assert [layer.name for layer in net.layers][:3] == ["Conv2D_1", "Max_Pool_1", "Conv2D_2"]
    assert net.input_shape == (28, 28, 1)
    # A node's receptive field is the chain's: the same as the spec-level function.
    assert conv3.receptive_field(1, 2) == receptive_field(net.config, "Conv2D_3", 1, 2)
    # Resolved once: the same (hashable) value every time, and a handle resolves to itself.
    assert net.layer("Conv2D_3") == conv3 and hash(net.layer("Conv2D_3")) == hash(conv3)
    assert find_layer(net.config, conv3) is conv3


def test_unknown_and_wrong_kind_layers_are_one_line_with_near_names():
    net = init_model(ModelConfig(), 0)
    with pytest.raises(LayerError, match="Conv2D_3") as e:
        net.layer("Conv2D_33")
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(LayerError, match="unknown map layer 'Dense_1'"):
        net.layer("Dense_1", MAP_KINDS)
    with pytest.raises(LayerError, match="another network"):
        init_model(ModelConfig(conv=((4, 3, "relu"),), pool=(), dense=((10, "softmax"),)), 0).layer(
            net.layer("Conv2D_3")
        )


def test_node_checks_name_the_layer():
    net = init_model(ModelConfig(), 0)
    assert net.layer("Conv2D_3").check_node((2, 2)) == (2, 2)
    with pytest.raises(LayerError, match="outside the 3x3 maps of Conv2D_3"):
        net.layer("Conv2D_3").check_node((3, 0))
    with pytest.raises(LayerError, match="not to the vector layer Dense_1"):
        net.layer("Dense_1").check_node((0, 0))


def test_activations_of_several_layers_equal_single_layer_calls():
    net = init_model(ModelConfig(), 1)
    x = _images()
    layers = [net.layer("Dense_1"), "Conv2D_1", "Max_Pool_2"]
    acts = jax.jit(lambda x: net.activations(x, layers))(x)
    assert set(acts) == {"Dense_1", "Conv2D_1", "Max_Pool_2"}
    for name, value in acts.items():
        np.testing.assert_allclose(value, net(x, until=name), rtol=1e-5, atol=1e-6)
    pre = net.activations(x, ["Conv2D_2"], pre_activation=True)["Conv2D_2"]
    np.testing.assert_array_equal(pre, net(x, until="Conv2D_2", pre_activation=True))
    assert (np.asarray(pre) < 0).any()  # Before the ReLU.


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.conv(x)).mean(axis=(1, 2)))


def test_an_nnx_module_speaks_the_same_protocol():
    from jaxoip.models.adapter import from_nnx

    trained = from_nnx(_Tiny(nnx.Rngs(0)), (12, 12, 1))
    net = trained.model
    conv = net.layer("conv")
    assert conv.kind == "conv" and conv.shape == (12, 12, 4) and conv.is_maps
    assert conv.receptive_field(0, 0) is None  # A foreign module's geometry is unknown.
    x = _images(2, (12, 12, 1))
    acts = net.activations(x, ["conv", "head"])
    np.testing.assert_allclose(acts["head"], net(x), rtol=1e-5, atol=1e-6)


def test_explicit_chain_aliases_resolve_to_their_layer():
    cfg = ModelConfig(
        layers=(
            LayerSpec("c1", "conv", 4, 3, "relu"),
            LayerSpec("p1", "pool", 2),
            LayerSpec("flat", "flatten"),
            LayerSpec("out", "dense", 10, activation="softmax"),
        )
    )
    net = init_model(cfg, 0)
    assert net.layer("Conv2D_1") == net.layer("c1") and "Conv2D_1" in net.layer("c1").aliases
    assert net.layer("Max_Pool_1").name == "p1" and net.layer("Dense_1").name == "out"


def test_a_keras_graph_gives_several_layers_from_one_call():
    from jaxoip.models.keras_net import from_keras, import_keras

    keras = import_keras()  # On the JAX backend.

    inp = keras.Input((10, 10, 1))
    a = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="a")(inp)
    b = keras.layers.Conv2D(3, 3, padding="same", name="b")(a)
    s = keras.layers.Add(name="res")([a, b])
    out = keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D(name="gap")(s))
    from jaxoip.data.mnist import Standardization

    net = from_keras(keras.Model(inp, out), Standardization.parse("0..1")).model
    x = _images(2, (10, 10, 1))
    for im2col in (False, True):
        net.im2col = im2col
        acts = jax.jit(lambda x: net.activations(x, ["res", net.layer("a"), "out"]))(x)
        assert set(acts) == {"res", "a", "out"}
        for name, value in acts.items():
            np.testing.assert_allclose(value, net(x, until=name), rtol=1e-5, atol=1e-6)
