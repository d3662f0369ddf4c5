"""PyTorch modules through `jaxoip.from_torch` (torchax): every layer equals torch's own output, gradients equal
torch's autograd, the search recovers a planted optimum, the command line takes a factory file, and every
refusal is one line. Skipped without the extra (`pip install 'jaxoip[torch]'`)."""

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="PyTorch models need the extra: pip install 'jaxoip[torch]'")
if importlib.util.find_spec("torchax") is None:
    pytest.skip("PyTorch models need the extra: pip install 'jaxoip[torch]'", allow_module_level=True)

from torch import nn  # noqa: E402
from torch_models import ResNet18, SmallCNN, randomize_batch_norms  # noqa: E402

import jaxoip  # noqa: E402
from jaxoip import cli  # noqa: E402
from jaxoip.cli import scan_all_maps  # noqa: E402
from jaxoip.errors import CheckpointError, JaxoipError, LayerError  # noqa: E402
from jaxoip.models import torch_net  # noqa: E402
from jaxoip.models.cnn import layer_aliases, layer_names, layer_shapes  # noqa: E402
from jaxoip.oip.search import OIPConfig, search_oips  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "torch_model.py"
PIXELS = jaxoip.Standardization.identity()  # Pixels go in as they are.


def torch_outputs(net: nn.Module, images_NHWC: np.ndarray) -> dict[str, np.ndarray]:
    """Every submodule's output at its last call in eager torch (eval mode), NHWC, and the module's output."""
    outputs, hooks = {}, []
    for name, module in net.named_modules():
        if name:
            save = lambda m, a, out, name=name: outputs.__setitem__(name, out.detach().clone())
            hooks.append(module.register_forward_hook(save))
    try:
        with torch.no_grad():
            outputs[""] = net.eval()(torch.from_numpy(images_NHWC.transpose(0, 3, 1, 2)))
    finally:
        for hook in hooks:
            hook.remove()
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1) if t.ndim == 4 else t.numpy()
    return {name: nhwc(t) for name, t in outputs.items() if isinstance(t, torch.Tensor)}


def check_layers(trained, net, images, names):
    """The layers `names` of `trained` (one compiled program) equal torch's outputs to 1e-4."""
    graphdef, params = nnx.split(trained.model)
    outputs = jax.jit(lambda p, x: [nnx.merge(graphdef, p)(x, until=n) for n in names])(params, jnp.asarray(images))
    expected = torch_outputs(net, images)
    for name, got in zip(names, outputs):
        want = expected[name if name in expected else layer_aliases(trained.config).get(name, "")]
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    net = randomize_batch_norms(SmallCNN())
    return net, jaxoip.from_torch(net, (32, 32, 3), PIXELS)


def test_layers_are_the_submodules_by_path_and_equal_torchs_outputs(small):
    net, trained = small
    names = layer_names(trained.config)
    assert names == (
        "conv1",
        "bn1",
        "act1",
        "pool1",
        "block.conv",
        "block.bn",
        "block.act",
        "block",
        "pool2",
        "fc",
    )
    assert [s.kind for s in trained.config.layers] == ["conv", *["maps"] * 3, "conv", *["maps"] * 4, "dense"]
    shapes = layer_shapes(trained.config)
    assert shapes["conv1"] == (32, 32, 8) and shapes["block"] == (16, 16, 8) and shapes["fc"] == (10,)
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    check_layers(trained, net, images, names)
    assert shapes["block_conv"] == (16, 16, 8)  # Lucent's spelling of a path names the same layer.
    np.testing.assert_array_equal(
        trained.layer_output(images, "block_conv"), trained.layer_output(images, "block.conv")
    )


def test_the_users_module_is_not_changed():
    torch.manual_seed(0)
    net = SmallCNN().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trained = jaxoip.from_torch(net, (32, 32, 3), PIXELS)
    trained.layer_output(np.zeros((1, 32, 32, 3), np.float32), "block")
    assert net.training and all(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.mnist  # Needs no MNIST: in that tier for its ResNet-18 (the fast tier stays under 2 minutes).
def test_a_resnet18_at_64x64_equals_torch():
    """torchvision's resnet18(weights=None), written out (torchvision does not import beside the CPU build of
    torch): its blocks' shared `relu` is read at its last call, as Lucent reads it."""
    torch.manual_seed(0)
    net = randomize_batch_norms(ResNet18())
    trained = jaxoip.from_torch(net, (64, 64, 3), PIXELS)
    names = layer_names(trained.config)
    assert len(names) == 67 and names[-1] == "fc" and "layer4.1.conv1" in names
    assert names.index("layer1.0.relu") == names.index("layer1.0.bn2") + 1  # After the residual add.
    assert layer_shapes(trained.config)["layer4_1_conv1"] == (2, 2, 512)
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    check_layers(trained, net, images, ["conv1", "bn1", "layer1.0.relu", "layer2.0.downsample.0", "layer4_1_conv1"])


@pytest.mark.slow
def test_every_layer_of_a_resnet18_equals_torch():
    torch.manual_seed(0)
    net = randomize_batch_norms(ResNet18())
    trained = jaxoip.from_torch(net, (64, 64, 3), PIXELS)
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    check_layers(trained, net, images, layer_names(trained.config))


def test_the_gradient_of_a_maps_mean_equals_torchs_autograd(small):
    net, trained = small
    images = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    graphdef, params = nnx.split(trained.model)
    objective = lambda p, x: nnx.merge(graphdef, p)(x, until="block.conv")[..., 3].mean()
    got = jax.jit(jax.grad(objective, argnums=1))(params, jnp.asarray(images))
    x = torch.from_numpy(images.transpose(0, 3, 1, 2)).requires_grad_(True)
    outputs = []
    hook = net.block.conv.register_forward_hook(lambda m, a, out: outputs.append(out))
    net.eval()(x)
    hook.remove()
    (want,) = torch.autograd.grad(outputs[0][:, 3].mean(), x)
    np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-7)


def test_with_im2col_the_layers_run_in_nhwc_with_the_plain_lowerings_values_and_gradients(small):
    """torchax computes in NCHW; with im2col no transpose of the activations is left (batch norm, PReLU, max
    pooling and the residual add run in NHWC), and the value and gradient equal torchax's own lowering."""
    net, _ = small
    images = jnp.asarray(np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype(np.float32))
    results, transposes = [], []
    for im2col in (False, True):
        graphdef, params = nnx.split(jaxoip.from_torch(net, (32, 32, 3), PIXELS, im2col=im2col).model)
        objective = lambda p, x, g=graphdef: nnx.merge(g, p)(x, until="block")[..., 3].mean()  # noqa: E731
        with jaxoip.precision_scope("highest"):
            results.append(jax.jit(jax.value_and_grad(objective, argnums=1))(params, images))
        jaxpr = jax.make_jaxpr(jax.grad(objective, argnums=1))(params, images).jaxpr
        transposes.append(sum(e.primitive.name == "transpose" and e.invars[0].aval.shape[0] == 2 for e in jaxpr.eqns))
    (value, grad), (value_im2col, grad_im2col) = results
    np.testing.assert_allclose(value_im2col, value, rtol=1e-5)
    np.testing.assert_allclose(grad_im2col, grad, rtol=1e-5, atol=1e-5 * float(jnp.abs(grad).max()))
    assert transposes[0] > 0 and transposes[1] == 0


def test_the_weights_are_arguments_of_the_compiled_program(small):
    """nnx.split gives the torch weights as NNX variables: new weights change the output, not the program."""
    _, trained = small
    graphdef, params = nnx.split(trained.model)
    assert set(nnx.state(trained.model, nnx.BatchStat)["weights"]) >= {"bn1.running_mean", "bn1.running_var"}
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x, until="fc"))
    images = jnp.ones((1, 32, 32, 3))
    before = forward(params, images)
    doubled = jax.tree.map(lambda v: v * 2 if v.dtype == jnp.float32 else v, params)
    with jaxoip.count_compiles() as compiles:
        after = forward(doubled, images)
    assert compiles.programs == 0 and not np.allclose(before, after)


@pytest.mark.mnist  # Needs no MNIST: in that tier for its torchax search (the fast tier stays under 2 minutes).
def test_the_search_recovers_a_planted_optimum():
    """A 28x28 convolution whose kernel is a ring: its maps are the image's correlation with the ring, so
    the best standardized image is the ring itself."""
    from planted import ring_pattern

    conv = nn.Conv2d(1, 2, 28)
    with torch.no_grad():
        ring = torch.from_numpy(np.asarray(ring_pattern())) / 28.0
        conv.weight.copy_(ring.expand(2, 1, 28, 28))
        conv.bias.zero_()
    trained = jaxoip.from_torch(nn.Sequential(conv), (28, 28, 1), PIXELS)
    assert layer_names(trained.config) == ("0",) and trained.config.layers[0].kind == "conv"
    x0 = np.asarray(jaxoip.initial_images(jaxoip.start_keys(0, [0], 2).reshape(-1), ["fine"]))
    res = search_oips(trained.model, "0", np.array([0, 1], np.int32), x0, OIPConfig(steps=150, epsilon=0.05))
    corr = res.images.reshape(2, -1) @ np.asarray(ring_pattern()).reshape(-1) / 784
    assert np.all(corr > 0.95), corr


def test_refusals_are_one_line(small, monkeypatch):
    net, trained = small
    with pytest.raises(
        LayerError, match=r"unknown layer 'block.conv2'; valid names: conv1, bn1, .*; nearest: block.conv"
    ):
        trained.layer_output(np.zeros((1, 32, 32, 3), np.float32), "block.conv2")

    class Fractional(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.FractionalMaxPool2d(2, output_size=8)

        def forward(self, x):
            return self.pool(x).flatten(1)

    with pytest.raises(JaxoipError, match=r"^torchax cannot run the operation aten::fractional_max_pool2d \(in pool\)"):
        jaxoip.from_torch(Fractional(), (16, 16, 3), PIXELS)

    class Pair(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x

    class Tokens(nn.Module):
        def forward(self, x):
            return x.flatten(2)

    for module in (Pair(), Tokens()):
        with pytest.raises(JaxoipError, match=r"must return one array per image batch: \(B, classes\) or"):
            jaxoip.from_torch(module, (8, 8, 3), PIXELS)

    class Item(nn.Module):
        def forward(self, x):
            return x.flatten(1) * x.sum().item()

    with pytest.raises(JaxoipError, match="depends on values JAX cannot trace: Abstract tracer"):
        jaxoip.from_torch(Item(), (8, 8, 3), PIXELS)
    with pytest.raises(JaxoipError, match=r"does not run on \(32, 32, 1\) images \(in conv1\): "):
        jaxoip.from_torch(SmallCNN(), (32, 32, 1), PIXELS)
    with pytest.raises(JaxoipError, match="input_shape must be"):
        jaxoip.from_torch(SmallCNN(), (3, 32, 32, 1))
    with pytest.raises(JaxoipError, match=r"module must be a Module \(a torch.nn.Module\), got TrainedModel"):
        jaxoip.from_torch(trained, (32, 32, 3), PIXELS)
    for missing in ("torch", "torchax"):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, missing, None)  # `import torch` (or torchax) raises ImportError.
            with pytest.raises(JaxoipError, match=r"^a PyTorch model needs PyTorch and torchax, which are not"):
                jaxoip.from_torch(net, (32, 32, 3), PIXELS)
    assert "install 'jaxoip[torch]'" in str(torch_net.missing_extra("a PyTorch model"))


def test_a_factory_that_returns_a_bare_module_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "raw.py").write_text("from torch import nn\ndef factory():\n    return nn.Conv2d(3, 4, 3)\n")
    with pytest.raises(CheckpointError, match=r"returned a module; return jaxoip.from_torch\(module, input_shape"):
        jaxoip.load_model(f"{tmp_path / 'raw.py'}:factory")
    monkeypatch.setitem(sys.modules, "torch", None)
    (tmp_path / "fresh.py").write_text("import torch\ndef factory():\n    return None\n")
    with pytest.raises(
        CheckpointError, match=r"fresh.py:factory: a PyTorch model needs .* pip install 'jaxoip\[torch\]'"
    ):
        jaxoip.load_model(f"{tmp_path / 'fresh.py'}:factory")


@pytest.mark.mnist  # Needs no MNIST: in that tier for its whole command (the fast tier stays under 2 minutes).
def test_the_scan_command_takes_a_torch_factory(tmp_path):
    """`scan_all_maps --model file.py:factory` writes the table, the OIPs and the site; the best objective it
    reports is what torch's own forward pass gives on the written best image."""
    out = tmp_path / "out"
    argv = ["--model", f"{EXAMPLE}:factory", "--layer", "stem.0", "--maps", "0-1", "--restarts", "2", "--steps", "5"]
    quick = ["--recipes", "fine", "--precursor-starts", "2", "--screen", "1", "--no-progress", "--no-cache"]
    assert cli.run(scan_all_maps.main, [*argv, *quick, "--out", str(out)]) == 0
    assert all((out / name).is_file() for name in ("maps.csv", "oips.npz", "index.html"))
    import pandas as pd

    table = pd.read_csv(out / "maps.csv")
    oips = np.load(out / "oips.npz")
    spec = importlib.util.spec_from_file_location("torch_model_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.manual_seed(0)
    net = example.SmallNet().eval()
    pixels = oips["best_pixels"]
    x = np.asarray(example.IMAGENET(pixels), np.float32)
    conv = torch_outputs(net, x)["stem.0"]  # (maps, H, W, C)
    got = [conv[i, ..., m].mean() for i, m in enumerate(table["map"])]
    np.testing.assert_allclose(table["best_objective"], got, rtol=1e-3)


def test_a_module_without_an_input_scale_is_refused_unless_it_takes_mnist():
    with pytest.raises(JaxoipError, match=r"say how pixels .* map to the module's inputs"):
        jaxoip.from_torch(SmallCNN(), (32, 32, 3))
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    assert jaxoip.from_torch(net, (28, 28, 1)).standardization == jaxoip.Standardization.mnist()
