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
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import ArrayLike, Bool, Float, Int

from jaxoip._check import check_finite_images, check_float, check_int, check_type
from jaxoip.errors import DivergenceError, JaxoipError
from jaxoip.models.cnn import CNN, ModelConfig, check_cnn, nonfinite_parameters
from jaxoip.models.network import Layer
from jaxoip.numerics import check_seed, precision_scope, wait_ready
from jaxoip.oip import facets, optim, param, targets, transforms
from jaxoip.oip.config import ObjectiveConfig, OIPConfig, Terms
from jaxoip.oip.noise import standardize_image
from jaxoip.oip.objectives import Objective, resolve_objective
from jaxoip.progress import Progress


@dataclasses.dataclass
class OIPResult:
    """Search results for N images; arrays are NumPy, images standardized (N, 28, 28, 1)."""

    images: Float[np.ndarray, "n H W ch"]
    objective: Float[np.ndarray, " n"]  # after the last step
    traces: Float[np.ndarray, "n steps"]  # objective after each step
    snapshots: Float[np.ndarray, "n snapshots H W ch"]  # the images at `snapshot_steps`
    snapshot_steps: tuple[int, ...]
    converged_step: Int[np.ndarray, " n"]  # first step with relative change < conv_criterion; -1 if never
    stayed_zero: Bool[np.ndarray, " n"]  # the map never left zero (dead ReLU for this start)
    woken: Bool[np.ndarray, " n"] | None = None  # some step ascended the pre-activation (wake-up)
    seconds: float = 0.0
    steps_run: int = 0


@dataclasses.dataclass(frozen=True)
class SearchSetup:
    """What a search takes from the scan around it, derived rather than chosen (`plan_scan` sets it): the
    seed of the per-image transformation keys, how many consecutive images are one map's starts (the
    diversity term's groups), and the model's pixel standardization (for `OIPConfig.pixel_range`)."""

    seed: int = 0
    group: int = 1
    pixel_mean: tuple[float, ...] = ()
    pixel_std: tuple[float, ...] = ()

    def __post_init__(self):
        check_seed(self.seed)
        check_int("diversity group", self.group, 1)
        for name in ("pixel_mean", "pixel_std"):
            v = getattr(self, name)
            v = (v,) if isinstance(v, (int, float)) else tuple(v)
            for x in v:
                check_float(name, x)
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if len(self.pixel_mean) != len(self.pixel_std) or any(x <= 0 for x in self.pixel_std):
            raise JaxoipError("pixel_mean and pixel_std must have the same length, with every std above 0")

    @classmethod
    def of(cls, standardization, seed: int = 0, group: int = 1) -> SearchSetup:
        """The setup of a search for a model with `standardization` (its mean and std)."""
        return cls(seed, group, standardization.mean, standardization.std)


# With a sigmoid, start images' pixels are first clipped to this share of the range inside its ends, where
# the sigmoid's gradient is still 1% of its largest (a saturated start pixel would never move).
SIGMOID_START_MARGIN = 0.01


def pixel_bounds(
    cfg: OIPConfig, setup: SearchSetup, channels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, lo, hi) per channel, shaped (1, 1, C): the standardized values of pixels 0 and 255."""
    if not setup.pixel_std:
        raise JaxoipError(
            f"pixel range {cfg.pixel_range!r} needs the model's standardization (SearchSetup.of(standardization))"
        )
    if len(setup.pixel_std) not in (1, channels):
        raise JaxoipError(f"pixel_mean and pixel_std need 1 or {channels} values, got {len(setup.pixel_std)}")
    mean = np.broadcast_to(np.asarray(setup.pixel_mean, np.float32), (channels,)).reshape(1, 1, channels)
    std = np.broadcast_to(np.asarray(setup.pixel_std, np.float32), (channels,)).reshape(1, 1, channels)
    return mean, std, (0.0 - mean) / std, (255.0 - mean) / std


def pixel_range_maps(cfg: OIPConfig, setup: SearchSetup, channels: int):
    """(finish, view, start) for `cfg.pixel_range`, on batches except `finish` (one image, after each step).

    none: the study's re-standardization after each step, the loop carrying standardized images. clip:
    the re-standardized image clipped to the standardized values of pixels [0, 255] (projected ascent).
    sigmoid: the loop carries u, the image is 255 sigmoid(u) in pixels, standardized by the model's
    mean and std (no re-standardization: it would leave the range); a start image becomes the u of its
    pixels, clipped to `SIGMOID_START_MARGIN` inside the range.
    """
    identity = lambda x: x  # noqa: E731
    if cfg.pixel_range == "none":
        return standardize_image, identity, identity
    mean, std, lo, hi = (v[None] for v in pixel_bounds(cfg, setup, channels))  # (1, 1, 1, C): batches
    if cfg.pixel_range == "clip":
        return (
            lambda img: jnp.clip(standardize_image(img), lo[0], hi[0]),
            identity,
            lambda x: jnp.clip(x, lo, hi),
        )

    def view(u):
        return (255.0 * jax.nn.sigmoid(u) - mean) / std

    def start(x):
        frac = jnp.clip((x * std + mean) / 255.0, SIGMOID_START_MARGIN, 1.0 - SIGMOID_START_MARGIN)
        return jnp.log(frac) - jnp.log1p(-frac)

    return identity, view, start


def make_search(graphdef: nnx.GraphDef, objective: Objective, cfg: OIPConfig, setup: SearchSetup = SearchSetup()):
    """Pure (params, images (N,H,W,1), map_indices (N,), data_max, magnitude) -> dict of results, for one chunk.

    Each loop iteration costs one forward and one backward pass: the objective of image x_t comes
    with its gradient, so the trace entry of step t - 1 is written one iteration late. The loop
    carries standardized images; with the default config every step is the study's plain ascent.
    Toolkit options (all static, in `cfg`): the image is stepped in `cfg.param` coordinates; the
    objective is measured on a randomly transformed copy (per-image keys from `transforms.image_keys`);
    penalties and the diversity term are subtracted; with the objective's wake-up a ReLU target at zero is replaced
    by its pre-activation; with its selectivity the whole layer is computed and the selective objective
    (`targets.make_selective_objectives`, normalized by `data_max` (C,)) ascended; with `cfg.param` maco
    the image's amplitude spectrum is `magnitude` (H, W//2+1). Traces hold the objective (the target's
    value) of the (transformed) image each step was taken on; the final objective is that of the
    untransformed final image.
    """
    snaps = jnp.asarray(cfg.snapshots)
    plain_objectives = targets.plain_objectives(graphdef, objective)
    target_objectives = targets.make_target_objectives(graphdef, objective)
    selective_objectives = targets.make_selective_objectives(graphdef, objective)

    optimizer = optim.make_optimizer(cfg.optimizer, cfg.epsilon, cfg.grad_eps)

    def record(t, obj, prev, trace, conv_step, active):
        """Bookkeeping for the objective `obj` reached after step t - 1 (t >= 1)."""
        rel = jnp.abs(obj - prev) / jnp.maximum(jnp.abs(obj), 1e-12)
        newly = (t >= 1) & (conv_step < 0) & (obj > 0) & (rel < cfg.conv_criterion)
        conv_step = jnp.where(newly, t - 1, conv_step)
        trace = jax.lax.dynamic_update_slice(trace, obj[:, None], (0, jnp.maximum(t - 1, 0)))
        return trace, conv_step, active | (obj > 0)

    def search(params, x0, maps, data_max=None, magnitude=None):
        n, shape = x0.shape[0], x0.shape[1:3]
        custom = objective.wake or objective.custom
        keys = transforms.image_keys(setup.seed, x0, maps) if transforms.has_transform(cfg) else None
        if cfg.diversity > 0 and (setup.group < 2 or n % setup.group):
            raise JaxoipError(f"diversity needs groups of at least 2 starts dividing the batch ({n}, {setup.group})")

        finish, view, start = pixel_range_maps(cfg, setup, x0.shape[-1])

        def objectives(x):
            """(study objective, objective to ascend, asleep) per image."""
            if objective.selective > 0:
                obj, selective, wake_obj, asleep = selective_objectives(params, x, maps, data_max)
                return obj, jnp.where(asleep, wake_obj, selective), asleep
            if not custom:
                obj = plain_objectives(params, x, maps)
                return obj, obj, jnp.zeros((n,), bool)
            obj, wake_obj, asleep = target_objectives(params, x, maps)
            return obj, jnp.where(asleep, wake_obj, obj), asleep

        def total(p, t):
            x = jax.vmap(lambda q: param.to_image(cfg.param, q, shape, cfg.fourier_decay, magnitude))(p)
            if cfg.pixel_range == "sigmoid":
                x = view(x)
            elif cfg.param != "pixels":
                # Through the standardization: the gradient then vanishes only at the best standardized
                # image, whatever the metric of the parameters (pixels keep the study's step).
                x = jax.vmap(finish)(x)
            xt = transforms.transform_batch(cfg, keys, t, x) if keys is not None else x
            obj, ascend, asleep = objectives(xt)
            if transforms.has_penalty(cfg):
                ascend = ascend - jax.vmap(lambda img: transforms.penalty(cfg, img))(x)
            value = ascend.sum()  # Images are independent: each one's gradient is its own.
            if cfg.diversity > 0:
                features = facets.gram_features(nnx.merge(graphdef, params), xt)
                value = value - cfg.diversity * facets.diversity_penalty(features, setup.group).sum()
            return value, (obj, asleep)

        value_and_grad = jax.value_and_grad(total, has_aux=True)

        # The loop carries z: the standardized image, or with a sigmoid the image before it (`view` maps z
        # to the standardized image; the identity otherwise, the study's program unchanged).
        def to_params(z):
            return jax.vmap(lambda img: param.to_params(cfg.param, img, cfg.fourier_decay))(z)

        def body(state):
            t, z, prev, trace, snapshots, conv_step, active, woken, opt_state = state
            p = to_params(z)
            (_, (obj, asleep)), g = value_and_grad(p, t)
            trace, conv_step, active = record(t, obj, prev, trace, conv_step, active)
            updates, opt_state = optimizer.update(g, opt_state, p)  # Ascent: g is the objective's gradient.
            p = optax.apply_updates(p, updates)
            z = jax.vmap(lambda q: finish(param.to_image(cfg.param, q, shape, cfg.fourier_decay, magnitude)))(p)
            snapshots = jnp.where((snaps == t)[None, :, None, None, None], view(z)[:, None], snapshots)
            return t + 1, z, obj, trace, snapshots, conv_step, active, woken | asleep, opt_state

        def cond(state):
            t, conv_step = state[0], state[5]
            go = t < cfg.steps
            return go & ~jnp.all(conv_step >= 0) if cfg.early_stop else go

        z0 = start(x0)
        init = (
            jnp.asarray(0),
            z0,
            jnp.zeros((n,), jnp.float32),
            jnp.zeros((n, cfg.steps), jnp.float32),
            jnp.broadcast_to(x0[:, None], (n, len(cfg.snapshots), *x0.shape[1:])),
            jnp.full((n,), -1, jnp.int32),
            jnp.zeros((n,), bool),
            jnp.zeros((n,), bool),
            optimizer.init(to_params(z0)),  # No arrays for the study's stateless step.
        )
        t, z, prev, trace, snapshots, conv_step, active, woken, _ = jax.lax.while_loop(cond, body, init)
        x = view(z)
        obj = objectives(x)[0]  # After the last step, untransformed.
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
            woken=woken,
            steps_run=t,
        )

    return search


def _devices_mesh():
    from jaxoip import distributed

    devices = distributed.devices()
    # Auto axes: XLA propagates the batch sharding through the model (no per-op annotations needed).
    return jax.make_mesh((len(devices),), ("batch",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))


def default_chunk_size(config: ModelConfig | None = None) -> int:
    """Images per device per compiled call: 32 on CPU, where the working set then stays in cache (measured
    fastest of 16-1024 on a 2-core machine, see BENCHMARKS.md); on accelerators as many as memory allows.

    With the model's `config`, at most the largest power of two whose forward and backward buffers fit in
    the free memory (`jaxoip.models.memory`): an ImageNet-sized network runs in smaller chunks instead of
    being refused. The study's network always gets the full default.
    """
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        base = 32
    else:
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit", 16 * 2**30)
        # About 2 MB of live buffers per image for the LeNet-sized layers, with a wide margin.
        base = int(min(65536, max(256, limit // (2 * 2**20))))
    if config is None:
        return base
    from jaxoip.models.memory import available_bytes, bytes_per_image

    fits = max(1, available_bytes() // bytes_per_image(config))
    return int(min(base, 1 << (int(fits).bit_length() - 1)))


@functools.partial(jax.jit, static_argnames=("graphdef", "objective", "cfg", "setup"))
def _search_chunk(params, x0, maps, data_max, magnitude, *, graphdef, objective, cfg, setup):
    """The whole search for one chunk, one compiled program per (architecture, objective, config, shape).

    Inputs placed with a sharding (`jax.device_put`) carry it into the program, so one jitted function
    serves one device and many.
    """
    with precision_scope(cfg.precision):
        return make_search(graphdef, objective, cfg, setup)(params, x0, maps, data_max, magnitude)


def chunk_layout(
    n: int, chunk_size: int | None, n_devices: int, group: int = 1, fixed: bool = False
) -> tuple[int, int]:
    """(chunk, number of chunks) for n images: chunks of `chunk_size` images per device (default:
    `default_chunk_size`), a multiple of `group` (a map's starts searched together, for the diversity term),
    times the device count.

    Every device gets the same batch whatever the device count, so an image's result is the same bits on
    1 or many devices and processes: XLA's CPU kernels block a batch by its size. Below the chunk size
    (unless `fixed`) the batch is the next power of two at or above n (for group 1), so batches of similar
    size share one compiled program instead of compiling one each.
    """
    per_device = chunk_size or default_chunk_size()
    if n < per_device and not fixed:
        per_device = 1 << max(0, math.ceil(math.log2(max(n, 1)))) if group == 1 else n
    per_device = max(group, math.ceil(per_device / group) * group)
    chunk = per_device * n_devices
    return chunk, math.ceil(n / chunk)


def check_search_data(objective: Objective, cfg: OIPConfig, data_max, magnitude):
    """(data_max, magnitude) as float32 arrays where the search uses them, else None; one line naming what is
    missing or malformed."""
    layer_name = objective.layer.name
    if objective.selective > 0:
        if data_max is None:
            raise JaxoipError(
                "the selective objective needs every map's largest activation on the test images (data_max); none given"
            )
        data_max = np.asarray(data_max, np.float32)
        c = objective.layer.channels
        if data_max.shape != (c,) or not np.isfinite(data_max).all():
            raise JaxoipError(
                f"data_max must hold {c} finite values, one per unit of {layer_name}; got shape {data_max.shape}"
            )
    else:
        data_max = None
    if cfg.param == "maco":
        if magnitude is None:
            raise JaxoipError("the maco parameterization needs the training images' amplitude spectrum; none given")
        magnitude = np.asarray(magnitude, np.float32)
        h, w = objective.layer.config.input_shape[:2]
        if magnitude.shape != (h, w // 2 + 1) or not np.isfinite(magnitude).all() or not (magnitude > 0).any():
            raise JaxoipError(
                f"the maco magnitude must be {h}x{w // 2 + 1} finite values, not all zero; got {magnitude.shape}"
            )
    else:
        magnitude = None
    return data_max, magnitude


def check_finite(res: dict, params=None):
    """Stops on a diverged search (non-finite images or objectives) instead of reporting NaN as a finding.

    A smaller epsilon is suggested only when the model's `params` (when given) are finite: a NaN or
    infinite weight diverges whatever the step size.
    """
    bad = ~(np.isfinite(res["images"]).all(axis=(1, 2, 3)) & np.isfinite(res["objective"]))
    if bad.any():
        i = int(np.argmax(bad))
        steps = np.flatnonzero(~np.isfinite(res["traces"][i]))
        at = f"step {int(steps[0])}" if steps.size else "the last step"
        if params is not None and nonfinite_parameters(params):
            why = "the model has non-finite weights"
        elif steps.size and steps[0] == 0 and bad.all():  # Every start, at once: no step size does that.
            why = "the model computes NaN or infinity at the start images (an operation of the model, e.g. 0/0)"
        else:
            why = "try a smaller epsilon"
        raise DivergenceError(
            f"the OIP search diverged: start {i} became non-finite at {at} ({int(bad.sum())} starts in all); {why}"
        )


def search_oips(
    model: CNN,
    target: str | Layer | Objective,
    map_indices: Int[ArrayLike, " n"],
    init_images: Float[ArrayLike, "n H W ch"],
    cfg: OIPConfig = OIPConfig(),
    node: tuple[int, int] | None = None,
    chunk_size: int | None = None,
    progress: bool | Progress = False,
    data_max: Float[ArrayLike, " c"] | None = None,
    magnitude: Float[ArrayLike, "H Wr"] | None = None,
    fixed_chunk: bool = False,
    *,
    options: ObjectiveConfig | None = None,
    weighted: tuple[Terms, ...] = (),
    setup: SearchSetup = SearchSetup(),
) -> OIPResult:
    """Runs the OIP search for standardized images `init_images`, image i driving target `map_indices[i]`.

    `target`: a layer (name or `Layer`), whose units (or `weighted` sums of them) are ascended as `options`
    says (default `ObjectiveConfig()`; `node`: a map's node instead of its mean), or an `Objective` value
    (`jaxoip.oip.objectives.resolve_objective`).
    `data_max` (a selective objective): every unit's largest value over the test images, as
    `jaxoip.oip.precursor.data_activation` gives it. `magnitude` (with `cfg.param` maco): the fixed
    amplitude spectrum, `jaxoip.oip.param.maco_magnitude` of the standardized training images. `setup`: the
    transformations' seed, the diversity groups and the pixel standardization (`SearchSetup.of`).

    All chunks are dispatched before any result is fetched. `chunk_size` is per device (`chunk_layout`;
    `fixed_chunk`: also for fewer images), so results are the same bits on any number of devices and
    processes (`jaxoip.distributed`: the batch is sharded over all devices of all processes, each process
    builds only its part, and the results are gathered once), and do not depend on `chunk_size` up to
    float rounding; neither holds with `cfg.early_stop`, which stops a whole chunk at once. `progress`:
    True for a progress bar, or a `jaxoip.progress.Progress` to report into.
    """
    model_config = check_cnn(model).config
    check_type("cfg", cfg, OIPConfig)
    check_type("setup", setup, SearchSetup)
    obj = resolve_objective(model, target, node, options, weighted)
    maps = obj.check_targets(map_indices)
    # Bad inputs are refused before the sizing below compiles anything.
    maps, init_images, data_max, magnitude = check_search_inputs(
        model_config, obj, cfg, maps, init_images, data_max, magnitude
    )
    if chunk_size is not None:
        check_int("chunk size", chunk_size, 1)
        chunk = chunk_size
    else:  # The hand estimate's chunk, as `run_search` lays it out, checked by the compiled program's memory.
        group = setup.group if cfg.diversity > 0 else 1
        chunk = chunk_layout(len(maps), default_chunk_size(model_config), 1, group, fixed_chunk)[0]
        from jaxoip.oip.sizing import size_search_chunk  # It compiles this module's search.

        chunk = size_search_chunk(model, obj, cfg, setup, chunk, group).chunk
    return run_search(model, obj, maps, init_images, cfg, chunk, progress, data_max, magnitude, fixed_chunk, setup)


def check_search_inputs(model_config, objective, cfg, map_indices, init_images, data_max, magnitude):
    """The search's inputs as it takes them (int32 targets, float32 finite start images of the model's input
    shape, one per target; `data_max` and `magnitude` as `cfg` needs them), or one line."""
    map_indices = np.asarray(map_indices, np.int32).reshape(-1)
    init_images = check_finite_images("the start images", init_images).astype(np.float32)
    data_max, magnitude = check_search_data(objective, cfg, data_max, magnitude)
    if init_images.shape[1:] != model_config.input_shape or init_images.shape[0] != map_indices.shape[0]:
        raise JaxoipError(
            f"expected {map_indices.shape[0]} start images of shape {model_config.input_shape}, got {init_images.shape}"
        )
    return map_indices, init_images, data_max, magnitude


def run_search(
    model,
    objective: Objective,
    map_indices: Int[np.ndarray, " n"],
    init_images: Float[ArrayLike, "n H W ch"],
    cfg: OIPConfig,
    chunk_size: int,
    progress: bool | Progress = False,
    data_max: Float[ArrayLike, " c"] | None = None,
    magnitude: Float[ArrayLike, "H Wr"] | None = None,
    fixed_chunk: bool = False,
    setup: SearchSetup = SearchSetup(),
) -> OIPResult:
    """`search_oips` for a resolved objective and checked targets (`map_indices` int32, in range); the start
    images, `data_max` and `magnitude` are checked here."""
    from jaxoip import distributed
    from jaxoip.progress import as_progress

    model_config = model.config
    layer_name = objective.layer.name
    graphdef, params = nnx.split(model)
    map_indices, init_images, data_max, magnitude = check_search_inputs(
        model_config, objective, cfg, map_indices, init_images, data_max, magnitude
    )
    n = init_images.shape[0]
    n_dev = len(distributed.devices())
    group = setup.group if cfg.diversity > 0 else 1
    chunk, n_chunks = chunk_layout(n, chunk_size, n_dev, group, fixed_chunk)
    sharding = NamedSharding(_devices_mesh(), P("batch")) if n_dev > 1 else None
    many = distributed.process_count() > 1
    if many:  # Every process's copy of the weights and data, as one replicated global array each.
        params, data_max, magnitude = distributed.replicated((params, data_max, magnitude), sharding.mesh)
    pad = n_chunks * chunk - n
    x_all = np.concatenate([init_images, np.repeat(init_images[:1], pad, 0)])
    m_all = np.concatenate([map_indices, np.repeat(map_indices[:1], pad)])
    t0 = time.perf_counter()
    pending = []
    for c in range(n_chunks):
        x, m = x_all[c * chunk : (c + 1) * chunk], m_all[c * chunk : (c + 1) * chunk]
        if many:
            x, m = distributed.global_batch(x, sharding), distributed.global_batch(m, sharding)
        elif sharding is not None:
            x, m = jax.device_put(x, sharding), jax.device_put(m, sharding)
        pending.append(
            _search_chunk(
                params, x, m, data_max, magnitude, graphdef=graphdef, objective=objective, cfg=cfg, setup=setup
            )
        )
    parts, steps_run = [], 0
    with as_progress(progress, total=n_chunks, desc=f"OIP search {layer_name}", unit="chunk") as bar:
        if many:  # This process's part of every chunk as it finishes, then all of them at once.
            for out in pending:
                wait_ready(out)  # Not a blocking wait: a Ctrl-C lands between chunks' polls.
                bar.update(1)
            pending = distributed.gather(pending)
        for out in pending:
            wait_ready(out)
            out = jax.device_get(out)
            steps_run = max(steps_run, int(out.pop("steps_run")))
            parts.append(out)
            if not many:
                bar.update(1)
    res = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
    check_finite(res, params)
    return OIPResult(snapshot_steps=cfg.snapshots, seconds=time.perf_counter() - t0, steps_run=steps_run, **res)
