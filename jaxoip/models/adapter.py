"""A researcher's own Flax NNX module as a jaxoip network: its submodules are the layers.

`from_nnx(module, input_shape)` probes the module once (shapes only, no computation) and names every
submodule whose call returns a batch of maps (B, H, W, C) or vectors (B, N) by its attribute path
("features.conv3", "blocks.0"), in the order their outputs are computed. The last layer is the module's
output: its last submodule's, or one more layer, "output", when the module computes its output itself
(a mean, a reshape). The user's class is not changed: a layer's output is read with NNX's own
`nnx.capture(..., method_outputs=...)`, which records what every submodule's `__call__` returns, and
under `jax.jit` everything after that layer is dead code, which XLA drops.

Activations applied between submodules (`nnx.relu(self.conv(x))`) belong to no submodule: a conv
layer's output is its pre-activation. Wrap the pair in a submodule (e.g. `nnx.Sequential(conv, nnx.relu)`)
to address the activated maps.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from jaxoip._check import check_type
from jaxoip.data.mnist import Standardization
from jaxoip.errors import CheckpointError, JaxoipError, LayerError
from jaxoip.models.cnn import LayerSpec, Network, NetworkSpec, TrainedModel
from jaxoip.models.im2col import im2col_convs, use_im2col
from jaxoip.models.network import find_layer
from jaxoip.models.torch_net import missing_extra

OUTPUT = "output"


class NNXNetwork(Network):
    """A user's NNX module (`net`, in inference mode) with the layers found by `from_nnx` (`config`)."""

    def __init__(self, net: nnx.Module, config: NetworkSpec, im2col: bool | None = None):
        self.net = net
        self.config = config
        self.im2col = im2col  # Convolutions as im2col matmuls (None: on a CPU); see jaxoip.models.im2col.

    def __call__(self, images, until: str | None = None, pre_activation: bool = False):
        """Output of layer `until` (default: the module's output). `pre_activation` changes nothing: a
        submodule's output is what it computes, and activations between submodules are not layers."""
        name = None if until is None else find_layer(self.config, until).name
        if not use_im2col(self.im2col):
            return self._output(self.net, images, name)
        graphdef, state = nnx.split(self.net)
        run = lambda state, images: self._output(nnx.merge(graphdef, state), images, name)  # noqa: E731
        return im2col_convs(run)(state, images)

    def _output(self, net: nnx.Module, images, name: str | None):
        if name is None or name == self.config.layers[-1].name:
            return net(images)
        path = tuple(name.split("."))
        _, captured = nnx.capture(net, nnx.Intermediate, method_outputs=nnx.Intermediate)(images)
        for key, variable in nnx.to_flat_state(captured):
            if tuple(str(k) for k in key) == (*path, "__call__"):
                return variable.get_value()[0]  # The first call of the submodule.
        raise LayerError(f"submodule {'.'.join(path)} was not called for these images")


def _kind(module: nnx.Module, shape: tuple[int, ...]) -> str:
    if len(shape) == 3:  # (H, W, C) without the batch axis.
        return "conv" if isinstance(module, nnx.Conv) else "maps"
    return "dense" if isinstance(module, nnx.Linear) else "units"


def _kernel(module: nnx.Module) -> int:
    size = getattr(module, "kernel_size", None) if isinstance(module, nnx.Conv) else None
    return int(size[0]) if isinstance(size, (tuple, list)) and len(set(size)) == 1 else 0


def probe(net: nnx.Module, input_shape: tuple[int, int, int]) -> NetworkSpec:
    """The layers of `net` for images of `input_shape`: every submodule call that returns (B, H, W, C) or
    (B, N), in the order the outputs are computed, then the module's output. Runs on shapes only."""
    graphdef, state = nnx.split(net)
    returned_last: list[bool] = []
    drawn: list[str] = []  # The random streams a call draws from.
    calls: list[tuple[str, nnx.Module, tuple[int, ...]]] = []
    last: list[jax.Array] = []  # The last recorded output, to tell whether it is the module's output.

    def run(state, images):
        copy = nnx.merge(graphdef, state)  # Created in this trace, so that its classes may be instrumented.
        paths = {id(m): ".".join(str(p) for p in path) for path, m in nnx.iter_modules(copy) if path}
        classes = {type(m) for path, m in nnx.iter_modules(copy) if path}
        originals = {cls: cls.__dict__.get("__call__") for cls in classes}

        def recording(cls):
            call = cls.__call__

            def wrapper(self, *args, **kwargs):
                out = call(self, *args, **kwargs)
                if id(self) in paths and isinstance(out, jax.Array) and out.ndim in (2, 4):
                    if out.shape[0] == images.shape[0] and paths[id(self)] not in {c[0] for c in calls}:
                        calls.append((paths[id(self)], self, tuple(out.shape[1:])))
                        last[:] = [out]
                return out

            return wrapper

        try:
            for cls in classes:
                cls.__call__ = recording(cls)
            counts = {path: v.get_value() for path, v in nnx.to_flat_state(nnx.state(copy, nnx.RngCount))}
            out = copy(images)
            for path, v in nnx.to_flat_state(nnx.state(copy, nnx.RngCount)):
                if v.get_value() is not counts.get(path):  # A draw replaces the stream's count.
                    drawn.append(".".join(str(p) for p in path[:-1]))
            returned_last.append(bool(last) and out is last[0])
        finally:
            for cls, original in originals.items():
                if original is None:
                    del cls.__call__
                else:
                    cls.__call__ = original
        return out

    images = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    try:
        out = jax.eval_shape(run, state, images)
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises on these shapes.
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JaxoipError(f"the module does not run on {input_shape} images: {msg[:300]}") from None
    if drawn:
        raise JaxoipError(
            f"the module draws random numbers from nnx.Rngs when called ({', '.join(drawn[:3])}); jaxoip evaluates "
            "a module as a fixed function: draw only when not `deterministic` (as nnx.Dropout does), so that "
            "jaxoip's inference view turns the noise off"
        )
    if not isinstance(out, jax.ShapeDtypeStruct) or out.ndim not in (2, 4):
        raise JaxoipError("the module must return one array per image batch: (B, classes) or (B, H, W, C)")
    layers = [LayerSpec(name, _kind(m, shape), size=shape[-1], kernel=_kernel(m)) for name, m, shape in calls]
    shapes = [shape for _, _, shape in calls]
    if not returned_last[0]:  # The module computes its output itself: one more layer.
        output = OUTPUT if OUTPUT not in {layer.name for layer in layers} else "module_output"
        layers.append(LayerSpec(output, "maps" if out.ndim == 4 else "units", size=out.shape[-1]))
        shapes.append(tuple(out.shape[1:]))
    return NetworkSpec(layers=tuple(layers), shapes=tuple(shapes), input_shape=tuple(input_shape))


def from_nnx(
    module: nnx.Module,
    input_shape: tuple[int, int, int],
    standardization: Standardization | None = None,
    im2col: bool | None = None,
) -> TrainedModel:
    """A researcher's own NNX module as a model for every jaxoip analysis.

    `input_shape` is (H, W, C) of one image as the module takes it; `standardization` maps pixels to those
    inputs (default: none, pixels go in as they are). The module is used in inference mode (dropout off,
    batch-norm running statistics) through a view; the user's module is not changed. `im2col`: run its
    convolutions as im2col matmuls (default: on a CPU, where the search is then several times faster).
    """
    check_type("module", module, nnx.Module, " (a Flax NNX module)")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise JaxoipError(f"input_shape must be (height, width, channels) of positive integers, got {input_shape!r}")
    std = Standardization.identity() if standardization is None else standardization
    check_type("standardization", std, Standardization)
    std.check("from_nnx")
    net = nnx.view(module, deterministic=True, use_running_average=True, raise_if_not_found=False)
    spec = probe(net, shape)
    return TrainedModel(
        model=NNXNetwork(net, spec, im2col),
        standardization=std,
        train_config={"source": f"nnx:{type(module).__module__}.{type(module).__qualname__}"},
    )


def load_factory(spec: str) -> TrainedModel:
    """The model that `path/to/file.py:factory` returns (it calls `jaxoip.from_nnx` or `jaxoip.from_torch`);
    one line otherwise."""
    file, _, name = str(spec).rpartition(":")
    path = Path(file).expanduser().absolute()
    if not path.is_file():
        raise CheckpointError(f"--model {spec}: no Python file {path}")
    if not name.isidentifier():
        raise CheckpointError(f"--model {spec}: {name!r} is not a function name (file.py:factory)")
    module_name = f"jaxoip_user_{abs(hash(str(path)))}"
    loader = importlib.util.spec_from_file_location(module_name, path)
    user = importlib.util.module_from_spec(loader)
    sys.path.insert(0, str(path.parent))  # The file may import its neighbours.
    try:
        loader.loader.exec_module(user)
        factory = getattr(user, name, None)
        if not callable(factory):
            raise CheckpointError(f"--model {spec}: {path.name} has no function {name!r}")
        trained = factory()
    except JaxoipError:
        raise
    except SystemExit as e:  # Not the command's end: the factory was to return a model.
        raise CheckpointError(
            f"--model {spec}: {name}() called sys.exit({e.code!r}) instead of returning jaxoip.from_nnx(...)"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything; report it in one line.
        if isinstance(e, ModuleNotFoundError) and e.name in ("torch", "torchax"):  # A PyTorch file, no extra.
            raise CheckpointError(f"--model {spec}: {missing_extra('a PyTorch model')}") from None
        raise CheckpointError(f"--model {spec}: {type(e).__name__}: {str(e).strip()[:300]}") from None
    finally:
        sys.path.remove(str(path.parent))
    torch = sys.modules.get("torch")  # Imported by the file if it made a PyTorch module.
    adapter = "from_nnx" if isinstance(trained, nnx.Module) else None
    if torch is not None and isinstance(trained, torch.nn.Module):
        adapter = "from_torch"
    if adapter:
        raise CheckpointError(
            f"--model {spec}: {name}() returned a module; return jaxoip.{adapter}(module, input_shape, ...) "
            "so that its input shape and standardization are known"
        )
    return check_type(
        f"what {name}() returned", trained, TrainedModel, " (return jaxoip.from_nnx(...) or jaxoip.from_torch(...))"
    )


def is_factory(path: str | os.PathLike) -> bool:
    """Whether a --model value names a Python factory (`file.py:function`)."""
    file, sep, _ = str(path).rpartition(":")
    return bool(sep) and file.endswith(".py")
