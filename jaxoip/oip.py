"""Optimal input patterns (OIPs): gradient ascent on the input image of one feature map, batched.

One compiled program runs the whole search for a batch of (map, start) images: a `lax.while_loop`
over the steps, every image of the batch updated at once. Large sweeps are cut into equal chunks
(the last one padded) that reuse the same compiled program, with the batch axis sharded over all
visible devices.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxoip._check import check_float, check_int
from jaxoip.errors import DivergenceError, JaxoipError, LayerError
from jaxoip.model import CNN, ModelConfig, get_layer, layer_shapes, map_activation
from jaxoip.noise import standardize_image
from jaxoip.numerics import DEFAULT_PRECISION, Precision, check_precision, precision_scope

STUDY_SNAPSHOT_STEPS = (9, 18, 36, 72, 144, 288)


@dataclasses.dataclass(frozen=True)
class OIPConfig:
    """The study's search: 600 steps of size 0.01 on the RMS-normalized gradient, re-standardizing the image."""

    steps: int = 600
    epsilon: float = 0.01
    conv_criterion: float = 2e-4
    snapshot_steps: tuple[int, ...] = STUDY_SNAPSHOT_STEPS  # The last step is always added.
    early_stop: bool = False  # Stop when every image of a chunk has converged (then results depend on the chunk).
    grad_eps: float = 1e-5  # Added to the gradient's RMS before dividing.
    precision: Precision = DEFAULT_PRECISION  # Matmul precision of the search: highest, tf32 or bf16.

    def __post_init__(self):
        check_precision(self.precision)
        object.__setattr__(self, "snapshot_steps", tuple(self.snapshot_steps))
        check_int("steps", self.steps, 1)
        check_float("epsilon", self.epsilon, 0, lo_open=True)
        check_float("convergence criterion", self.conv_criterion, 0)
        check_float("grad_eps", self.grad_eps, 0, lo_open=True)
        for s in self.snapshot_steps:
            check_int("snapshot step", s, 0)

    @property
    def snapshots(self) -> tuple[int, ...]:
        """0-based steps after which the image is kept: the requested ones below `steps`, and the last."""
        return tuple(sorted({s for s in self.snapshot_steps if 0 <= s < self.steps - 1} | {self.steps - 1}))


@dataclasses.dataclass
class OIPResult:
    """Search results for N images; arrays are NumPy, images standardized (N, 28, 28, 1)."""

    images: np.ndarray
    objective: np.ndarray  # (N,) after the last step
    traces: np.ndarray  # (N, steps): objective after each step
    snapshots: np.ndarray  # (N, len(snapshot_steps), 28, 28, 1)
    snapshot_steps: tuple[int, ...]
    converged_step: np.ndarray  # (N,) first step with relative change < conv_criterion; -1 if never
    stayed_zero: np.ndarray  # (N,) the map never left zero (dead ReLU for this start)
    seconds: float = 0.0
    steps_run: int = 0


def check_target(config: ModelConfig, layer_name: str, map_indices, node: tuple[int, int] | None = None):
    """Validates an OIP target: a conv or pool layer, map indices in range, the node inside the map."""
    get_layer(config, layer_name, ("conv", "pool"))
    h, w, c = layer_shapes(config)[layer_name]
    maps = np.asarray(map_indices)
    if maps.size == 0:
        raise LayerError("no map index given")
    if not np.issubdtype(maps.dtype, np.integer):
        if not np.issubdtype(maps.dtype, np.number) or not np.all(np.isfinite(maps)) or np.any(maps != np.round(maps)):
            raise LayerError(f"map indices must be integers, got {maps.reshape(-1)[:5].tolist()}")
    if maps.min() < 0 or maps.max() >= c:
        bad = int(maps[(maps < 0) | (maps >= c)][0])
        raise LayerError(f"map index {bad} out of range: {layer_name} has maps 0..{c - 1}")
    if node is not None:
        i, j = node
        if not (0 <= i < h and 0 <= j < w):
            raise LayerError(f"node ({i}, {j}) outside the {h}x{w} maps of {layer_name}")


def map_objective(activations: jax.Array, map_index: jax.Array, node: tuple[int, int] | None = None) -> jax.Array:
    """Objective of one image: mean of map `map_index` of activations (H, W, C), or its node (i, j)."""
    fmap = jnp.take(activations, map_index, axis=-1)
    return fmap[node] if node is not None else fmap.mean()


def make_objectives(graphdef: nnx.GraphDef, layer_name: str, node: tuple[int, int] | None = None):
    """Pure (params, images (N,H,W,1), map_indices (N,)) -> objectives (N,), one selected map per image."""

    def objectives(params, x, maps):
        fmap = map_activation(nnx.merge(graphdef, params), x, layer_name, maps)  # (N, H, W)
        return fmap[:, node[0], node[1]] if node is not None else fmap.mean(axis=(1, 2))

    return objectives


def make_search(graphdef: nnx.GraphDef, layer_name: str, cfg: OIPConfig, node: tuple[int, int] | None = None):
    """Pure (params, images (N,H,W,1), map_indices (N,)) -> dict of results, for one chunk.

    Each loop iteration costs one forward and one backward pass: the objective of image x_t comes
    with its gradient, so the trace entry of step t - 1 is written one iteration late.
    """
    snaps = jnp.asarray(cfg.snapshots)
    objectives = make_objectives(graphdef, layer_name, node)
    # Images are independent, so the gradient of the sum is each image's own gradient.
    def total(p, x, m):
        obj = objectives(p, x, m)
        return obj.sum(), obj

    value_and_grad = jax.value_and_grad(total, argnums=1, has_aux=True)

    def rms_normalize(g):
        return g / (jnp.sqrt(jnp.mean(g**2)) + cfg.grad_eps)

    def record(t, obj, prev, trace, conv_step, active):
        """Bookkeeping for the objective `obj` reached after step t - 1 (t >= 1)."""
        rel = jnp.abs(obj - prev) / jnp.maximum(jnp.abs(obj), 1e-12)
        newly = (t >= 1) & (conv_step < 0) & (obj > 0) & (rel < cfg.conv_criterion)
        conv_step = jnp.where(newly, t - 1, conv_step)
        trace = jax.lax.dynamic_update_slice(trace, obj[:, None], (0, jnp.maximum(t - 1, 0)))
        return trace, conv_step, active | (obj > 0)

    def search(params, x0, maps):
        n = x0.shape[0]

        def body(state):
            t, x, prev, trace, snapshots, conv_step, active = state
            (_, obj), g = value_and_grad(params, x, maps)
            trace, conv_step, active = record(t, obj, prev, trace, conv_step, active)
            x = jax.vmap(standardize_image)(x + cfg.epsilon * jax.vmap(rms_normalize)(g))
            snapshots = jnp.where((snaps == t)[None, :, None, None, None], x[:, None], snapshots)
            return t + 1, x, obj, trace, snapshots, conv_step, active

        def cond(state):
            t, conv_step = state[0], state[5]
            go = t < cfg.steps
            return go & ~jnp.all(conv_step >= 0) if cfg.early_stop else go

        init = (
            jnp.asarray(0),
            x0,
            jnp.zeros((n,), jnp.float32),
            jnp.zeros((n, cfg.steps), jnp.float32),
            jnp.broadcast_to(x0[:, None], (n, len(cfg.snapshots), *x0.shape[1:])),
            jnp.full((n,), -1, jnp.int32),
            jnp.zeros((n,), bool),
        )
        t, x, prev, trace, snapshots, conv_step, active = jax.lax.while_loop(cond, body, init)
        obj = objectives(params, x, maps)  # After the last step.
        trace, conv_step, active = record(t, obj, prev, trace, conv_step, active)
        # After an early stop, the unfilled trace and snapshots hold the last values.
        trace = jnp.where(jnp.arange(cfg.steps)[None, :] < t, trace, obj[:, None])
        snapshots = jnp.where((snaps >= t)[None, :, None, None, None], x[:, None], snapshots)
        return dict(
            images=x,
            objective=obj,
            traces=trace,
            snapshots=snapshots,
            converged_step=conv_step,
            stayed_zero=~active,
            steps_run=t,
        )

    return search


def _devices_mesh():
    devices = jax.devices()
    # Auto axes: XLA propagates the batch sharding through the model (no per-op annotations needed).
    return jax.make_mesh((len(devices),), ("batch",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))


def default_chunk_size(n_devices: int | None = None) -> int:
    """Images per compiled call: 32 on CPU, where the working set then stays in cache (measured fastest
    of 16-1024 on a 2-core machine, see BENCHMARKS.md); on accelerators as many as memory allows."""
    devices = jax.devices()
    n_devices = n_devices or len(devices)
    if devices[0].platform == "cpu":
        return 32
    stats = devices[0].memory_stats() or {}
    limit = stats.get("bytes_limit", 16 * 2**30)
    # About 2 MB of live buffers per image for the LeNet-sized layers, with a wide margin.
    return int(min(65536, max(256, limit // (2 * 2**20))) // n_devices * n_devices)


@functools.partial(jax.jit, static_argnames=("graphdef", "layer_name", "cfg", "node"))
def _search_chunk(params, x0, maps, *, graphdef, layer_name, cfg, node):
    """The whole search for one chunk, one compiled program per (architecture, layer, config, node, shape).

    Inputs placed with a sharding (`jax.device_put`) carry it into the program, so one jitted function
    serves one device and many.
    """
    with precision_scope(cfg.precision):
        return make_search(graphdef, layer_name, cfg, node)(params, x0, maps)


def chunk_layout(n: int, chunk_size: int | None, n_devices: int) -> tuple[int, int]:
    """(chunk, number of chunks) for n images: chunks of equal size, a multiple of the device count.

    Below the default chunk size the chunk is the next power of two at or above n, so batches of
    similar size share one compiled program instead of compiling one each.
    """
    chunk = chunk_size or default_chunk_size(n_devices)
    if n < chunk:
        chunk = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    chunk = max(n_devices, math.ceil(chunk / n_devices) * n_devices)
    return chunk, math.ceil(n / chunk)


def check_finite(res: dict):
    """Stops on a diverged search (non-finite images or objectives) instead of reporting NaN as a finding."""
    bad = ~(np.isfinite(res["images"]).all(axis=(1, 2, 3)) & np.isfinite(res["objective"]))
    if bad.any():
        i = int(np.argmax(bad))
        steps = np.flatnonzero(~np.isfinite(res["traces"][i]))
        at = f"step {int(steps[0])}" if steps.size else "the last step"
        raise DivergenceError(
            f"the OIP search diverged: start {i} became non-finite at {at} ({int(bad.sum())} starts in all); "
            "try a smaller epsilon"
        )


def search_oips(
    model: CNN,
    layer_name: str,
    map_indices,
    init_images,
    cfg: OIPConfig = OIPConfig(),
    node: tuple[int, int] | None = None,
    chunk_size: int | None = None,
    progress=False,
) -> OIPResult:
    """Runs the OIP search for images `init_images` (N, H, W, 1), image i driving map `map_indices[i]`.

    All chunks are dispatched before any result is fetched. Results do not depend on `chunk_size` or
    the device count (up to float rounding), except with `cfg.early_stop`. `progress`: True for a
    progress bar, or a `jaxoip.progress.Progress` to report into.
    """
    from jaxoip.progress import as_progress

    model_config = model.config
    graphdef, params = nnx.split(model)
    check_target(model_config, layer_name, map_indices, node)
    map_indices = np.asarray(map_indices).astype(np.int32).reshape(-1)
    init_images = np.asarray(init_images, np.float32)
    if not np.isfinite(init_images).all():
        raise JaxoipError("start images hold NaN or infinite values")
    if chunk_size is not None:
        check_int("chunk size", chunk_size, 1)
    n = init_images.shape[0]
    if init_images.shape[1:] != model_config.input_shape or n != map_indices.shape[0]:
        raise JaxoipError(
            f"expected {map_indices.shape[0]} start images of shape {model_config.input_shape}, got {init_images.shape}"
        )
    n_dev = len(jax.devices())
    chunk, n_chunks = chunk_layout(n, chunk_size, n_dev)
    sharding = NamedSharding(_devices_mesh(), P("batch")) if n_dev > 1 else None
    node = tuple(int(v) for v in node) if node is not None else None

    pad = n_chunks * chunk - n
    x_all = np.concatenate([init_images, np.repeat(init_images[:1], pad, 0)])
    m_all = np.concatenate([map_indices, np.repeat(map_indices[:1], pad)])
    t0 = time.perf_counter()
    pending = []
    for c in range(n_chunks):
        x, m = x_all[c * chunk : (c + 1) * chunk], m_all[c * chunk : (c + 1) * chunk]
        if sharding is not None:
            x, m = jax.device_put(x, sharding), jax.device_put(m, sharding)
        pending.append(_search_chunk(params, x, m, graphdef=graphdef, layer_name=layer_name, cfg=cfg, node=node))
    parts, steps_run = [], 0
    with as_progress(progress, total=n_chunks, desc=f"OIP search {layer_name}", unit="chunk") as bar:
        for out in pending:
            out = jax.device_get(out)
            steps_run = max(steps_run, int(out.pop("steps_run")))
            parts.append(out)
            bar.update(1)
    res = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
    check_finite(res)
    return OIPResult(snapshot_steps=cfg.snapshots, seconds=time.perf_counter() - t0, steps_run=steps_run, **res)
