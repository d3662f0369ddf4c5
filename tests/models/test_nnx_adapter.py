"""A researcher's own Flax NNX module through `jaxoip.from_nnx`: its submodules by attribute path, the
search, exemplars and activation grids through the public API and the commands, and a planted optimum."""

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from planted import ring_pattern

import jaxoip
from jaxoip import cli
from jaxoip.cli import activations, scan_all_maps
from jaxoip.errors import CheckpointError, JaxoipError, LayerError
from jaxoip.models.cnn import layer_names, layer_shapes
from jaxoip.oip.search import OIPConfig, search_oips

# The README's example module (examples/own_model.py), loaded as the commands load it.
USER_MODULE = Path(__file__).resolve().parents[2] / "examples" / "own_model.py"
_spec = importlib.util.spec_from_file_location("own_model", USER_MODULE)
own_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(own_model)
MyNet = own_model.MyNet


@pytest.fixture(scope="module")
def user_model():
    return jaxoip.from_nnx(MyNet(nnx.Rngs(0)), (28, 28, 1), jaxoip.Standardization(33.3, 78.6))


def test_layers_are_the_submodules_by_attribute_path(user_model):
    assert layer_names(user_model.config) == (
        "stem.layers.0",
        "stem",
        "blocks.0.conv",
        "blocks.0",
        "blocks.1.conv",
        "blocks.1",
        "classifier",
    )
    shapes = layer_shapes(user_model.config)
    assert shapes["stem"] == (28, 28, 8) and shapes["blocks.1"] == (24, 24, 32) and shapes["classifier"] == (10,)
    assert [s.kind for s in user_model.config.layers][:3] == ["conv", "maps", "conv"]


def test_layer_outputs_equal_the_module_called_directly(user_model):
    net = MyNet(nnx.Rngs(0))
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 28, 28, 1)).astype(np.float32)
    x = (pixels - 33.3) / 78.6
    block0 = net.blocks[0](net.stem(x))
    np.testing.assert_allclose(user_model.layer_output(pixels, "blocks.0"), block0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        user_model.layer_output(pixels, "blocks.1.conv"), net.blocks[1].conv(block0), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(user_model.layer_output(pixels, "classifier"), net(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(LayerError, match="unknown layer 'blocks.2'; valid names: stem.layers.0, stem"):
        user_model.layer_output(pixels, "blocks.2")


def test_the_users_module_is_not_changed():
    net = MyNet(nnx.Rngs(0))
    before = type(net.blocks[0]).__call__
    model = jaxoip.from_nnx(net, (28, 28, 1))
    model.layer_output(np.zeros((1, 28, 28, 1), np.float32), "blocks.0")
    assert type(net.blocks[0]).__call__ is before and not hasattr(net, "__captures__")


def test_scan_exemplars_and_grid_through_the_public_api(user_model, mnist):
    result = jaxoip.scan_maps(
        user_model, "blocks.1", [0, 3], restarts=2, config=OIPConfig(steps=20), progress=False, quality=None
    )
    assert result.images.shape == (2, 2, 28, 28, 1) and np.isfinite(result.images).all()
    assert (result.objective[:, 0] > 0).all()
    ex = jaxoip.find_exemplars(user_model, mnist, "blocks.0", k=3)
    assert ex.image_indices.shape == (16, 3) and (ex.values[:, 0] > 0).any()
    grid = jaxoip.layer_grid(user_model, "stem", "test:0", data=mnist)
    assert grid.activations.shape == (28, 28, 8)


def test_the_commands_take_a_factory_file(tmp_path, mnist):
    spec = f"{USER_MODULE}:factory"
    out = tmp_path / "scan"
    argv = ["--model", spec, "--layer", "blocks.0", "--maps", "0,1", "--steps", "10", "--restarts", "2"]
    assert cli.run(scan_all_maps.main, [*argv, "--exemplars", "2", "--out", str(out)]) == 0
    assert (out / "oips.npz").is_file() and (out / "gallery.png").is_file()
    act = tmp_path / "act"
    assert cli.run(activations.main, ["--model", spec, "--layer", "stem", "--image", "test:0", "--out", str(act)]) == 0
    assert any(p.suffix == ".png" for p in act.iterdir())


def test_a_bad_factory_is_one_line(tmp_path, capsys):
    shutil.copy(USER_MODULE, tmp_path / "m.py")
    (tmp_path / "bad.py").write_text("def factory():\n    raise RuntimeError('no weights here')\n")
    (tmp_path / "raw.py").write_text(
        "from flax import nnx\nfrom m import MyNet\ndef factory():\n    return MyNet(nnx.Rngs(0))\n"
    )
    for spec, message in [
        (f"{tmp_path / 'm.py'}:nothing", "m.py has no function 'nothing'"),
        (f"{tmp_path / 'bad.py'}:factory", "RuntimeError: no weights here"),
        (f"{tmp_path / 'raw.py'}:factory", r"returned a module; return jaxoip.from_nnx"),
        (f"{tmp_path / 'none.py'}:factory", "no Python file"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            jaxoip.load_model(spec)
    code = cli.run(scan_all_maps.main, ["--model", f"{tmp_path / 'bad.py'}:factory", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "no weights here" in err
    with pytest.raises(JaxoipError, match=r"does not run on \(32, 32, 3\) images"):
        jaxoip.from_nnx(MyNet(nnx.Rngs(0)), (32, 32, 3))
    with pytest.raises(JaxoipError, match="input_shape must be"):
        jaxoip.from_nnx(MyNet(nnx.Rngs(0)), (28, 28))


class RingDetector(nnx.Module):
    """A module of its own naming whose `detector` nodes are the correlation of the image with a ring."""

    def __init__(self):
        self.detector = nnx.Linear(784, 2, rngs=nnx.Rngs(0))
        w = ring_pattern().reshape(-1) / 28.0
        self.detector.kernel[...] = jnp.stack([w, w], axis=1)
        self.detector.bias[...] = jnp.zeros(2)

    def __call__(self, x):
        return self.detector(x.reshape(x.shape[0], -1))


def test_the_search_recovers_a_planted_optimum():
    trained = jaxoip.from_nnx(RingDetector(), (28, 28, 1))
    assert layer_names(trained.config) == ("detector",)
    x0 = np.asarray(jaxoip.initial_images(jaxoip.start_keys(0, [0], 2).reshape(-1), ["fine"]))
    res = search_oips(trained.model, "detector", np.zeros(2, np.int32), x0, OIPConfig(steps=150, epsilon=0.05))
    ring = np.asarray(ring_pattern()).reshape(-1)
    corr = res.images.reshape(2, -1) @ ring / ring.size
    assert np.all(corr > 0.95), corr


def test_the_seed_comparison_says_it_takes_jaxoips_cnn(user_model):
    from jaxoip.seeds.compare import check_models

    reference = jaxoip.load_reference_model()
    assert not user_model.model.rebuildable and reference.model.rebuildable
    with pytest.raises(JaxoipError, match="model 0 is a module of your own: the seed comparison compares"):
        check_models([user_model, user_model])
    linear = dataclasses.replace(reference, model=nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(JaxoipError, match="model 1's .model must be a Network"):
        check_models([reference, linear])
