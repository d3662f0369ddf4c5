"""A PyTorch module as a jaxoip network, run in JAX through torchax: its submodules are the layers.

`from_torch(module, input_shape)` probes a copy of the module once (shapes only, no computation) and names
every submodule whose call returns a batch of maps (B, C, H, W) or vectors (B, N) by its `named_modules()`
path ("layer4.1.conv1"), in the order their outputs are computed; Lucent's spelling ("layer4_1_conv1") names
the same layer. The last layer is the module's output: its last submodule's, or one more layer, "output",
when `forward` computes its output itself. torchax (`torchax.extract_jax`) turns the module into a pure
JAX function of its weights, which live in the network as NNX variables, so that the weights are traced
arguments of every compiled program, as an NNX module's are. A layer's output is read with a forward hook
on its submodule while that function is traced; under `jax.jit` everything after the layer is dead code,
which XLA drops. jaxoip's images are (B, H, W, C); the transposes to and from PyTorch's NCHW stay here.
With im2col (the default on a CPU) they cancel with those that torchax's layers imply, and the whole
network's convolutional layers compute in NHWC (`jaxoip.models.layout`).

A submodule called more than once per forward pass (torchvision's ResNet blocks call one `relu` twice) is
read at its last call, as Lucent's hooks read it. Activations applied in `forward` by functions
(`F.relu(self.conv(x))`) belong to no submodule: such a conv layer's output is its pre-activation.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxoip._check import check_type
from jaxoip.data.mnist import Standardization, model_standardization
from jaxoip.errors import JaxoipError, LayerError
from jaxoip.models.cnn import LayerSpec, Network, NetworkSpec, TrainedModel
from jaxoip.models.im2col import im2col_convs, use_im2col
from jaxoip.models.network import find_layer

OUTPUT = "output"
# A `torch.nn.Module`: torch is an optional extra, imported only when a PyTorch model is used.
TorchModule = Any
EXTRA = "pip install 'jaxoip[torch]'"


def missing_extra(what: str) -> JaxoipError:
    return JaxoipError(f"{what} needs PyTorch and torchax, which are not installed: {EXTRA}")


def import_torchax():
    """torchax, imported with the compatibility patch below; one line naming the extra when it is missing.

    PyTorch 2.13 removed named tensors and with them their operator overloads (`aten.prod.dim_Dimname`,
    `aten.norm.names_out`, ...: 21 of those that torchax names). torchax up to 0.0.13, the newest release,
    names them as keys of two tables at import (`amp.py`'s cast policies and `decompositions.py`'s list of
    decompositions to take), so `import torchax` fails on PyTorch >= 2.13 (torchax issue #101). While torchax
    is imported here, and only then, such an overload (its name says `dimname` or `names`) that PyTorch no
    longer has resolves to a placeholder string: a table key that no call can ever dispatch to, as the
    operator no longer exists (`torch._decomp.get_decompositions` skips what is not an operator). Any other
    missing attribute raises as before, and PyTorch's own `__getattr__` is restored after the import.
    """
    try:
        import torch
    except ImportError:
        raise missing_extra("a PyTorch model") from None
    if sys.modules.get("torchax") is not None and "torchax.decompositions" in sys.modules:
        return sys.modules["torchax"]
    packet = torch._ops.OpOverloadPacket
    original = packet.__getattr__

    def named_tensor_placeholder(self, key):
        try:
            return original(self, key)
        except AttributeError:
            if "dimname" in key.lower() or "names" in key:
                return f"{self._qualified_op_name}.{key} (a named-tensor overload PyTorch no longer has)"
            raise

    packet.__getattr__ = named_tensor_placeholder
    try:
        import torchax
        import torchax.decompositions  # noqa: F401 - torchax imports it lazily; the patch must cover it too.
    except ImportError:
        raise missing_extra("a PyTorch model") from None
    finally:
        packet.__getattr__ = original
    return torchax


class TorchProgram:
    """The torchax function of a module copy and its submodules by path: static (hashed by identity), so that
    jitted programs are cached per network."""

    def __init__(self, module, function, env):
        self.module = module
        self.function = function  # (weights, (images_NCHW,)) -> output, traceable by JAX.
        self.env = env
        self.submodules = dict(module.named_modules())

    def run(self, weights: dict, images_NCHW: jax.Array) -> jax.Array:
        """The module's output. PyTorch broadcasts as NumPy does (a bias of shape (C,) added to (B, C)), so
        JAX's rank promotion is allowed here, whatever the caller's setting."""
        with jax.numpy_rank_promotion("allow"):
            return self.function(weights, (images_NCHW,))

    def __call__(self, weights: dict, images_NHWC: jax.Array, layer: str | None):
        """The output of submodule `layer` (its last call), or of the module with None; (B, H, W, C) or (B, N)."""
        x = jnp.transpose(images_NHWC, (0, 3, 1, 2))
        if layer is None:
            out = self.run(weights, x)
        else:
            # The value when the call returns: a later in-place operation (`out += identity`, an in-place
            # ReLU) changes the tensor, not what the layer computed.
            outputs = []
            hook = self.submodules[layer].register_forward_hook(lambda m, a, o: outputs.append(self.env.t2j_iso(o)))
            try:
                self.run(weights, x)
            finally:
                hook.remove()
            if not outputs:
                raise LayerError(f"submodule {layer} was not called for these images")
            out = outputs[-1]
        return jnp.transpose(out, (0, 2, 3, 1)) if out.ndim == 4 else out


class TorchNetwork(Network):
    """A PyTorch module (a copy in eval mode) run through torchax, with the layers found by `from_torch`."""

    def __init__(
        self, weights: dict, program: TorchProgram, buffers: frozenset, config: NetworkSpec, im2col: bool | None = None
    ):
        # Parameters and buffers (batch-norm statistics) as NNX variables: arguments of every compiled program.
        self.weights = nnx.data(
            {k: (nnx.BatchStat if k in buffers else nnx.Param)(jnp.asarray(v)) for k, v in weights.items()}
        )
        self.program = program
        self.config = config
        self.im2col = im2col  # Convolutions as im2col matmuls (None: on a CPU); see jaxoip.models.im2col.

    def __call__(self, images, until: str | None = None, pre_activation: bool = False):
        """Output of layer `until` (default: the module's output). `pre_activation` changes nothing: a
        submodule's output is what it computes, and activations applied in `forward` are not layers."""
        name = self.config.layers[-1].name if until is None else find_layer(self.config, until).name
        layer = None if name == self.config.layers[-1].name and name not in self.program.submodules else name
        weights = {k: v[...] for k, v in self.weights.items()}
        run = lambda weights, images: self.program(weights, images, layer)  # noqa: E731
        return (im2col_convs(run) if use_im2col(self.im2col) else run)(weights, images)


def _failure(e: Exception, where: list[str], input_shape) -> JaxoipError:
    """One line for what went wrong while tracing the module: an op torchax cannot lower, a value JAX cannot
    trace (`.item()`, data-dependent shapes), or anything else the module raises on these shapes."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    layer = f" (in {where[-1]})" if where else ""
    if type(e).__name__ == "OperatorNotFound":
        op = msg.removeprefix("Operator with name ").removesuffix(" has no lowering")
        return JaxoipError(f"torchax cannot run the operation {op}{layer} in JAX; replace it or the layer using it")
    if isinstance(e, (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError)):
        return JaxoipError(f"the module's forward pass depends on values JAX cannot trace{layer}: {msg[:300]}")
    return JaxoipError(f"the module does not run on {tuple(input_shape)} images{layer}: {msg[:300]}")


def probe(program: TorchProgram, weights: dict, input_shape: tuple[int, int, int]) -> NetworkSpec:
    """The layers of the module for images of `input_shape`: every submodule whose (last) call returns
    (B, C, H, W) or (B, N), in the order of those calls, then the module's output. Runs on shapes only."""
    import torch

    calls: dict[str, tuple[object, tuple[int, ...], jax.Array]] = {}  # In the order of their last calls.
    running: list[str] = []  # The submodules being called, innermost last: where a failure happened.
    returned_last: list[bool] = []

    def run(weights, images):
        def enter(name):
            return lambda module, args: running.append(name)

        def leave(name):
            def hook(module, args, out):
                running.pop()
                if isinstance(out, torch.Tensor) and out.ndim in (2, 4) and out.shape[0] == images.shape[0]:
                    value = program.env.t2j_iso(out)
                    shape = tuple(out.shape[1:]) if out.ndim == 2 else (*out.shape[2:], out.shape[1])
                    calls.pop(name, None)
                    calls[name] = (module, shape, value)

            return hook

        handles = []
        try:
            for name, module in program.submodules.items():
                if name:  # The root's forward is called directly, not through hooks.
                    handles.append(module.register_forward_pre_hook(enter(name)))
                    handles.append(module.register_forward_hook(leave(name)))
            out = program.run(weights, jnp.transpose(images, (0, 3, 1, 2)))
        finally:
            for handle in handles:
                handle.remove()
        returned_last.append(bool(calls) and out is list(calls.values())[-1][2])
        return out

    images = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    try:
        out = jax.eval_shape(run, weights, images)
    except Exception as e:  # noqa: BLE001 - whatever the user's module or torchax raises on these shapes.
        raise _failure(e, running, input_shape) from None
    if not isinstance(out, jax.ShapeDtypeStruct) or out.ndim not in (2, 4) or out.shape[0] != 2:
        raise JaxoipError("the module must return one array per image batch: (B, classes) or (B, C, H, W)")

    def kind(module, shape):
        if len(shape) == 3:
            return "conv" if isinstance(module, torch.nn.Conv2d) else "maps"
        return "dense" if isinstance(module, torch.nn.Linear) else "units"

    def kernel(module):
        size = module.kernel_size if isinstance(module, torch.nn.Conv2d) else ()
        return int(size[0]) if len(set(size)) == 1 else 0

    layers = [LayerSpec(n, kind(m, s), size=s[-1], kernel=kernel(m)) for n, (m, s, _) in calls.items()]
    shapes = [s for _, s, _ in calls.values()]
    if not returned_last[0]:  # forward computes its output itself: one more layer.
        output = OUTPUT if OUTPUT not in program.submodules else "module_output"
        shape = tuple(out.shape[1:]) if out.ndim == 2 else (*out.shape[2:], out.shape[1])
        layers.append(LayerSpec(output, "maps" if out.ndim == 4 else "units", size=shape[-1]))
        shapes.append(shape)
    names = {layer.name for layer in layers}
    aliases = {layer.name.replace(".", "_"): layer.name for layer in layers}  # Lucent's spelling.
    aliases = tuple((alias, name) for alias, name in aliases.items() if alias not in names)
    return NetworkSpec(layers=tuple(layers), shapes=tuple(shapes), input_shape=tuple(input_shape), aliases=aliases)


def from_torch(
    module: TorchModule,
    input_shape: tuple[int, int, int],
    standardization: Standardization | None = None,
    im2col: bool | None = None,
) -> TrainedModel:
    """A PyTorch module (`torch.nn.Module`) as a model for every jaxoip analysis, run in JAX by torchax.

    `input_shape` is (H, W, C) of one image, as jaxoip shows images (the module gets (B, C, H, W));
    `standardization` maps pixels to the module's inputs (`Standardization.parse("imagenet")`, "0..1", ...;
    required, except for a 28x28x1 module, which takes the study's MNIST standardization). A copy of the
    module is used, in eval mode (dropout off, batch-norm running statistics) and float32; the user's module
    is not changed. `im2col`: run its convolutions as im2col matmuls (default: on a CPU, where the search is
    then several times faster; BENCHMARKS.md).
    """
    torchax = import_torchax()
    import torch

    check_type("module", module, torch.nn.Module, " (a torch.nn.Module)")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise JaxoipError(f"input_shape must be (height, width, channels) of positive integers, got {input_shape!r}")
    std, std_source = model_standardization(
        standardization,
        shape,
        "say how pixels (0-255) map to the module's inputs: from_torch(..., standardization="
        "Standardization.parse('imagenet' | '0..1' | '-1..1' | 'MEAN,STD'))",
    )
    net = copy.deepcopy(module).cpu().float().eval()
    for p in net.parameters():
        p.requires_grad_(False)  # The search differentiates with JAX; torch's autograd stays out of the trace.
    weights, function = torchax.extract_jax(net)
    buffers = frozenset(name for name, _ in net.named_buffers())
    program = TorchProgram(net, function, torchax.default_env())
    spec = probe(program, weights, shape)
    return TrainedModel(
        model=TorchNetwork(weights, program, buffers, spec, im2col),
        standardization=std,
        train_config={
            "source": f"torch:{type(module).__module__}.{type(module).__qualname__}",
            "standardization_data": std_source,
        },
    )
