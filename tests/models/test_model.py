import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxoip.errors import LayerError
from jaxoip.models.cnn import (
    ModelConfig,
    batched_layer_map,
    conv2d,
    init_model,
    layer_names,
    layer_output,
    layer_shapes,
    max_pool,
    param_count,
    receptive_field,
)

STUDY_SHAPES = {
    "Conv2D_1": (26, 26, 32),
    "Max_Pool_1": (13, 13, 32),
    "Conv2D_2": (11, 11, 64),
    "Max_Pool_2": (5, 5, 64),
    "Conv2D_3": (3, 3, 128),
    "Flatten": (1152,),
    "Dense_1": (100,),
    "Dense_2": (10,),
}


def test_parameter_count_is_the_studys():
    assert param_count(init_model()) == 208_982


def test_layer_names_and_shapes():
    cfg = ModelConfig()
    assert layer_names(cfg) == tuple(STUDY_SHAPES)
    assert layer_shapes(cfg) == STUDY_SHAPES


def test_every_layer_activation_shape():
    model = init_model(seed=1)
    graphdef, params = nnx.split(model)
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    for name, shape in STUDY_SHAPES.items():
        assert layer_output(graphdef, params, x, name).shape == (3, *shape)
    probs = layer_output(graphdef, params, x, "Dense_2")
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    logits = layer_output(graphdef, params, x, "Dense_2", pre_activation=True)
    np.testing.assert_allclose(jax.nn.softmax(logits), probs, rtol=1e-5)


def test_post_relu_activations_are_nonnegative():
    model = init_model(seed=2)
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    assert float(model(x, until="Conv2D_2").min()) >= 0
    assert float(model(x, until="Conv2D_2", pre_activation=True).min()) < 0


def test_unknown_layer_lists_valid_names():
    with pytest.raises(LayerError, match="valid names: Conv2D_1, Max_Pool_1"):
        init_model()(jnp.zeros((1, 28, 28, 1)), until="Conv2D_4")


def test_conv_matches_xla_convolution():
    x = jax.random.normal(jax.random.key(0), (2, 13, 13, 5))
    k = jax.random.normal(jax.random.key(1), (3, 3, 5, 7))
    # Both at true float32 (a GPU's default would be TF32 for the reference): they differ only in the
    # order of a 45-term sum, so by float32 rounding (~1e-6 relative, 1e-5 allowed).
    ref = jax.lax.conv_general_dilated(
        x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST
    )
    np.testing.assert_allclose(conv2d(x, k), ref, rtol=1e-5, atol=1e-5)


def test_max_pool_matches_reduce_window():
    x = jax.random.normal(jax.random.key(0), (2, 11, 11, 3))
    ref = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(max_pool(x, 2), ref)


def test_receptive_fields_of_the_study():
    cfg = ModelConfig()
    assert receptive_field(cfg, "Conv2D_1", 0, 0) == (0, 3, 0, 3)
    assert receptive_field(cfg, "Conv2D_2", 1, 2) == (2, 10, 4, 12)  # 8x8
    assert receptive_field(cfg, "Conv2D_3", 0, 0) == (0, 18, 0, 18)
    assert receptive_field(cfg, "Conv2D_3", 2, 2) == (8, 26, 8, 26)
    with pytest.raises(LayerError):
        receptive_field(cfg, "Conv2D_3", 3, 0)


def test_batched_layer_map_matches_direct_pass():
    model = init_model(seed=3)
    x = jax.random.normal(jax.random.key(0), (7, 28, 28, 1))
    out = batched_layer_map(model, x, "Conv2D_3", lambda a: a.mean(axis=(1, 2)), batch_size=3)
    np.testing.assert_allclose(out, model(x, until="Conv2D_3").mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_custom_config():
    cfg = ModelConfig(conv=((4, 3, "relu"),), pool=(2,), dense=((10, "softmax"),))
    model = init_model(cfg)
    assert layer_shapes(cfg)["Flatten"] == (13 * 13 * 4,)
    assert model(jnp.zeros((1, 28, 28, 1))).shape == (1, 10)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("layer", ["Conv2D_1", "Max_Pool_1", "Conv2D_2", "Max_Pool_2", "Conv2D_3"])
def test_map_activation_equals_full_layer(layer):
    from jaxoip.models.cnn import map_activation

    model = init_model(seed=4)
    x = jax.random.normal(jax.random.key(0), (5, 28, 28, 1))
    maps = jnp.array([0, 3, 1, 7, 3])
    full = model(x, until=layer)
    np.testing.assert_allclose(
        map_activation(model, x, layer, maps), full[jnp.arange(5), ..., maps], rtol=1e-5, atol=1e-5
    )
