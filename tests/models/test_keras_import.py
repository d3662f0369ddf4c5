"""The study's Keras CNN, built and saved by Keras 3 (JAX backend), loads through `load_model` with equal outputs."""

import gzip
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from jaxoip import cli
from jaxoip.cli import activations, scan_all_maps
from jaxoip.data import mnist as data_lib
from jaxoip.data.mnist import Standardization
from jaxoip.errors import CheckpointError, DataError
from jaxoip.models.checkpoint import load_model
from jaxoip.models.cnn import ModelConfig, get_layer, layer_aliases, layer_names, layer_shapes, param_count
from jaxoip.models.keras import parse_config

os.environ.setdefault("KERAS_BACKEND", "jax")  # Before keras is imported: its default backend is TensorFlow.
needs_keras = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None, reason="keras is not installed (pip install -e '.[test]')"
)


def _write_idx(path, arr, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(f"{path}.gz", "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """A small MNIST-shaped IDX folder whose training-set mean and std are known."""
    d = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(1)
    _write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 256, (50, 28, 28)), 2051)
    _write_idx(d / "train-labels-idx1-ubyte", rng.integers(0, 10, (50,)), 2049)
    _write_idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (8, 28, 28)), 2051)
    _write_idx(d / "t10k-labels-idx1-ubyte", rng.integers(0, 10, (8,)), 2049)
    return d


def _study_cnn(keras, seed=0):
    """The study's CNN with its layer names (conv and pool named, dense left to Keras), random weights."""
    from keras import layers

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu", name="Conv2D_1"),
            layers.MaxPooling2D(2, name="Max_Pool_1"),
            layers.Conv2D(64, 3, activation="relu", name="Conv2D_2"),
            layers.MaxPooling2D(2, name="Max_Pool_2"),
            layers.Conv2D(128, 3, activation="relu", name="Conv2D_3"),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(100, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )
    # Random biases too (Keras initializes them to zero), so a misplaced bias cannot go unnoticed.
    rng = np.random.default_rng(seed)
    model.set_weights(
        [1.5 * w if w.ndim > 1 else rng.normal(0, 0.1, w.shape).astype(np.float32) for w in model.get_weights()]
    )
    return model


def _functional(keras, sequential):
    """The same network and weights through Keras' functional API: `keras.Model(inputs, outputs)`."""
    inputs = keras.Input((28, 28, 1))
    x = inputs
    for layer in sequential.layers:
        x = layer(x)
    return keras.Model(inputs, x)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    keras = pytest.importorskip("keras", reason="keras is not installed (pip install -e '.[test]')")
    model = _study_cnn(keras)
    d = tmp_path_factory.mktemp("keras")
    model.save(d / "study.keras")
    model.save(d / "study.h5")
    functional = _functional(keras, model)
    functional.save(d / "functional.keras")
    functional.save(d / "functional.h5")
    return model, d


@needs_keras
@pytest.mark.parametrize("name", ["study.keras", "study.h5", "functional.keras", "functional.h5"])
def test_keras_model_matches_keras_predictions(keras_files, idx_dir, name):
    keras_model, d = keras_files
    trained = load_model(d / name, data_dir=idx_dir)
    # The study's architecture (208,982 parameters), its layers under their Keras names and the study's.
    assert param_count(trained.model) == 208_982
    assert [layer_shapes(trained.config)[n] for n in layer_names(ModelConfig()) if n != "Flatten"] == [
        s for n, s in layer_shapes(ModelConfig()).items() if n != "Flatten"
    ]
    mnist = data_lib.load_mnist(idx_dir)
    assert trained.standardization == Standardization.fit(mnist.train_images)
    pixels = mnist.test_images
    x = trained.standardization(pixels)
    import keras

    with jax.default_matmul_precision("highest"):
        got = np.asarray(trained.layer_output(pixels, "Dense_2"))
        got_hidden = np.asarray(trained.layer_output(pixels, "Dense_1"))
        with jax.numpy_rank_promotion("allow"):  # Keras broadcasts biases by rank promotion.
            expected = keras_model.predict(x, verbose=0)
            # The flattened features feed Dense_1: equal hidden units check the NHWC flatten order.
            hidden = keras.Model(keras_model.inputs[0], keras_model.layers[-2].output)(x)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got_hidden, np.asarray(hidden), atol=1e-5, rtol=1e-5)
    assert np.ptp(expected, axis=0).max() > 0.05  # Outputs that tell the images apart, far above the tolerance.
    assert trained.train_config["keras_layers"]["Dense_1"] == keras_model.layers[-2].name


@pytest.mark.mnist  # Needs no MNIST: in that tier for its two whole commands (the fast tier stays under 2 minutes).
@needs_keras
def test_keras_model_as_command_input(keras_files, idx_dir, tmp_path):
    _, d = keras_files
    out = tmp_path / "act"
    argv = ["--model", str(d / "study.h5"), "--data-dir", str(idx_dir), "--image", "test:0", "--out", str(out)]
    assert cli.run(activations.main, [*argv, "--layer", "Conv2D_2"]) == 0
    assert any(p.suffix == ".png" for p in out.iterdir())
    # The study's CNN saved through the functional API, scanned by its Keras layer name.
    scan = ["--model", str(d / "functional.keras"), "--data-dir", str(idx_dir), "--layer", "Conv2D_3", "--maps", "0-3"]
    scan += ["--steps", "5", "--restarts", "2", "--precursor-starts", "4", "--screen", "2", "--no-progress"]
    assert cli.run(scan_all_maps.main, [*scan, "--no-html", "--out", str(tmp_path / "scan")]) == 0
    assert (tmp_path / "scan" / "gallery.png").is_file()


@needs_keras
def test_keras_model_without_mnist_is_one_line(keras_files, monkeypatch, capsys):
    _, d = keras_files
    monkeypatch.delenv(data_lib.DATA_DIR_ENV, raising=False)

    def no_tfds():
        raise DataError("no MNIST data")

    monkeypatch.setattr(data_lib, "_load_tfds", no_tfds)
    with pytest.raises(DataError, match="--data-dir DIR"):
        load_model(d / "study.keras")
    assert cli.run(scan_all_maps.main, ["--model", str(d / "study.keras"), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "standardized with the training set" in err


@needs_keras
def test_a_weights_only_file_is_one_line(tmp_path, idx_dir):
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(8, 3), layers.Flatten()])
    model.save_weights(tmp_path / "only.weights.h5")
    with pytest.raises(CheckpointError, match="no model config"):
        load_model(tmp_path / "only.weights.h5", data_dir=idx_dir)


def _layer(kind, **config):
    return {"class_name": kind, "config": {"name": config.pop("name", kind.lower()), **config}}


_CONV = _layer("Conv2D", filters=4, kernel_size=[3, 3], activation="relu")


@pytest.mark.parametrize(
    "layers, message",
    [
        ([_CONV, _layer("LayerNormalization"), _layer("Flatten")], r"'layernormalization' \(LayerNormalization\) is"),
        ([_CONV, _layer("Flatten"), _layer("Dense", units=10, activation="gelu")], "activation 'gelu'"),
        ([_layer("Conv2D", filters=4, kernel_size=[3, 3], dilation_rate=[2, 2]), _layer("Flatten")], "dilated"),
        ([_layer("Conv2D", filters=4, kernel_size=[3, 2]), _layer("Flatten")], "only square kernels"),
        ([_CONV, _layer("Dense", units=10)], "needs a flatten or global pooling"),
        ([_CONV], "must end in a vector output"),
        ([_CONV, _layer("Rescaling", scale=0.5), _layer("Flatten")], "preprocessing is supported only as the first"),
        ([_layer("ReLU", max_value=6.0), _layer("Flatten")], "only a plain ReLU"),
    ],
)
def test_parse_config_rejects_other_architectures(layers, message):
    with pytest.raises(CheckpointError, match=message):
        parse_config({"class_name": "Sequential", "config": {"layers": layers}}, "m.keras")


def test_parse_config_maps_layers_by_order():
    pool = _layer("MaxPooling2D", name="Max_Pool_1", pool_size=[2, 2], strides=None)
    layers = [
        _CONV,
        pool,
        _CONV,
        _layer("Flatten"),
        _layer("Dense", name="d0", units=7),
        _layer("Dense", name="d1", units=3),
    ]
    layers[2] = _layer("Conv2D", name="conv2d_1", filters=4, kernel_size=[3, 3], activation="relu")
    config, preprocessing = parse_config({"class_name": "Sequential", "config": {"layers": layers}}, "m.h5")
    assert preprocessing == []
    assert layer_names(config) == ("conv2d", "Max_Pool_1", "conv2d_1", "flatten", "d0", "d1")
    assert layer_aliases(config) == {"Conv2D_1": "conv2d", "Conv2D_2": "conv2d_1", "Dense_1": "d0", "Dense_2": "d1"}
    assert layer_shapes(config)["Dense_1"] == (7,) and get_layer(config, "Conv2D_2").name == "conv2d_1"
    with pytest.raises(CheckpointError, match="only Sequential or single-chain functional"):
        parse_config({"class_name": "Subclassed", "config": {"layers": layers}}, "m.h5")
    # A functional config whose layers carry no inbound nodes is not a chain.
    with pytest.raises(CheckpointError, match=r"layer .* takes 0 inputs; only models whose layers form a single chain"):
        parse_config({"class_name": "Functional", "config": {"layers": layers}}, "m.h5")


@pytest.mark.parametrize("name", ["broken.keras", "broken.h5"])
def test_unreadable_keras_files_are_one_line(tmp_path, name):
    (tmp_path / name).write_bytes(b"not a model")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / name)
    assert "\n" not in str(e.value) and name in str(e.value)
    with pytest.raises(CheckpointError, match="no Keras model file"):
        load_model(tmp_path / "missing.keras")


@needs_keras
def test_named_data_folder_that_does_not_load_says_why(keras_files, tmp_path):
    _, d = keras_files
    with pytest.raises(DataError, match="does not exist"):
        load_model(d / "study.keras", data_dir=tmp_path / "nope")


_KERAS2_KEYS = {
    "name",
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "data_format",
    "dilation_rate",
    "activation",
    "use_bias",
    "pool_size",
    "units",
    "rate",
}


def _write_keras2_h5(path, keras_model):
    """The layout of a tf.keras 2.x `model.save("x.h5")`: weights named 'layer/kernel:0', input shape on layer 1."""
    import h5py

    layers, weights = [], {}
    for i, layer in enumerate(keras_model.layers):
        config = {k: v for k, v in layer.get_config().items() if k in _KERAS2_KEYS}
        if i == 0:
            config["batch_input_shape"] = [None, 28, 28, 1]
        layers.append({"class_name": type(layer).__name__, "config": config})
        weights[layer.name] = [(f"{layer.name}/{v.name}:0", np.asarray(v)) for v in layer.weights]
    model_config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"], f.attrs["backend"] = "2.4.0", "tensorflow"
        f.attrs["model_config"] = json.dumps(model_config).encode()
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [name.encode() for name in weights]
        for name, named in weights.items():
            g.create_group(name).attrs["weight_names"] = [n.encode() for n, _ in named]
            for n, value in named:
                g[name].create_dataset(n, data=value)


@needs_keras
def test_keras2_h5_layout_loads(keras_files, idx_dir, tmp_path):
    keras_model, d = keras_files
    _write_keras2_h5(tmp_path / "keras2.h5", keras_model)
    old, new = load_model(tmp_path / "keras2.h5", data_dir=idx_dir), load_model(d / "study.keras", data_dir=idx_dir)
    assert old.config == new.config and param_count(new.model) == 208_982
    pixels = data_lib.load_mnist(idx_dir).test_images
    np.testing.assert_array_equal(old.layer_output(pixels, "Dense_2"), new.layer_output(pixels, "Dense_2"))


def _write_h5_of(path, params):
    """A tf.keras 2.x style `.h5` of the study's CNN with the given {jaxoip layer: {kernel, bias}} weights."""
    import h5py

    conv = lambda name, n: {
        "class_name": "Conv2D",
        "config": {"name": name, "filters": n, "kernel_size": [3, 3], "activation": "relu"},
    }  # noqa: E501, E731
    pool = lambda name: {"class_name": "MaxPooling2D", "config": {"name": name, "pool_size": [2, 2]}}  # noqa: E731
    dense = lambda name, n, act: {"class_name": "Dense", "config": {"name": name, "units": n, "activation": act}}  # noqa: E731
    layers = [conv("Conv2D_1", 32), pool("Max_Pool_1"), conv("Conv2D_2", 64), pool("Max_Pool_2")]
    layers += [conv("Conv2D_3", 128), {"class_name": "Flatten", "config": {"name": "flatten"}}]
    layers += [dense("Dense_1", 100, "relu"), dense("Dense_2", 10, "softmax")]
    layers[0]["config"]["batch_input_shape"] = [None, 28, 28, 1]
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": layers}}).encode()
        g = f.create_group("model_weights")
        for name, p in params.items():
            g.create_group(name).attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            for k in ("kernel", "bias"):
                g[name].create_dataset(f"{name}/{k}:0", data=np.asarray(p[k]))


def _jaxoip_params(seed=0):
    from flax import nnx

    from jaxoip.models.cnn import init_model

    return jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(init_model(ModelConfig(), seed), nnx.Param)))


def test_keras_file_with_nan_weights_is_refused_naming_the_layer(tmp_path, idx_dir):
    params = _jaxoip_params()
    _write_h5_of(tmp_path / "ok.h5", params)
    assert param_count(load_model(tmp_path / "ok.h5", data_dir=idx_dir).model) == 208_982  # The writer is right.
    params["Conv2D_2"]["kernel"][0, 1, 2, 3] = np.nan
    _write_h5_of(tmp_path / "nan.h5", params)
    with pytest.raises(CheckpointError, match=r"nan.h5 looks damaged: .*non-finite weights in layer 'Conv2D_2'"):
        load_model(tmp_path / "nan.h5", data_dir=idx_dir)


def test_h5_file_with_damaged_bytes_is_reported_as_damaged(tmp_path, idx_dir, capsys):
    import h5py

    _write_h5_of(tmp_path / "damaged.h5", _jaxoip_params())
    with h5py.File(tmp_path / "damaged.h5", "r") as f:
        offset = f["model_weights/Dense_1/Dense_1/kernel:0"].id.get_offset()
    raw = bytearray((tmp_path / "damaged.h5").read_bytes())
    raw[offset + 4000 : offset + 4064] = b"\xff" * 64  # 0xffffffff is a NaN in float32.
    (tmp_path / "damaged.h5").write_bytes(bytes(raw))
    argv = ["--model", str(tmp_path / "damaged.h5"), "--confusion", "--out", str(tmp_path / "o")]
    assert cli.run(activations.main, argv + ["--data-dir", str(idx_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "looks damaged" in err and "'Dense_1'" in err, err
    assert not (tmp_path / "o").exists()


def test_a_colour_checkpoint_round_trips(tmp_path):
    from jaxoip.models.checkpoint import save_model
    from jaxoip.models.cnn import TrainedModel, init_model

    config = ModelConfig(conv=((4, 3, "relu"),), pool=(2,), dense=((10, "softmax"),), input_shape=(32, 32, 3))
    trained = TrainedModel(init_model(config, 0), Standardization((120.0, 110.0, 100.0), (60.0, 61.0, 62.0)))
    loaded = load_model(save_model(tmp_path / "m", trained))
    assert loaded.config == config and loaded.standardization == trained.standardization
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.layer_output(pixels, "Dense_1"), trained.layer_output(pixels, "Dense_1"))


@pytest.mark.parametrize(
    "config",
    [
        {"class_name": "Sequential", "config": {"layers": [{"class_name": "Conv2D", "config": {"kernel_size": 3}}]}},
        {"class_name": "Sequential", "config": {"layers": ["not a layer"]}},
        {"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"units": "many"}}]}},
    ],
)
def test_a_malformed_keras_config_is_one_line(config):
    with pytest.raises(CheckpointError, match=r"m\.keras: (malformed Keras model config|layer)"):
        parse_config(config, "m.keras")
