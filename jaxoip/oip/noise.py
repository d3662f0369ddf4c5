"""Random initial images for the OIP search: fluctuations on several length scales, as in the study."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Key

from jaxoip.errors import JaxoipError
from jaxoip.numerics import FAST_COMPILE, as_key, check_seed
from jaxoip.oip.config import DEFAULT_GRIDS, DEFAULT_RECIPES, RECIPES, Recipe, get_recipes  # noqa: F401
from jaxoip.shapes import MapIndices

# Grids are written for the study's 28x28 images and scaled to the model's input (see `scaled_grids`).
REFERENCE_SIZE = 28
DEFAULT_SHAPE = (28, 28, 1)


def scaled_grids(grids: tuple[tuple[int, int], ...], size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """`grids` (for a 28x28 image) scaled to an image of `size` (H, W): each side by H/28 and W/28, rounded, >= 1.

    The 28x28 grid becomes the per-pixel grid (H, W); at 28x28 the grids are unchanged.
    """
    h, w = int(size[0]), int(size[1])
    return tuple((max(1, round(g[0] * h / REFERENCE_SIZE)), max(1, round(g[1] * w / REFERENCE_SIZE))) for g in grids)


def check_image_shape(shape) -> tuple[int, int, int]:
    """An image shape (H, W, C) of positive integers, as a tuple."""
    try:
        out = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise JaxoipError(f"an image shape must be (height, width, channels), got {shape!r}") from None
    if len(out) != 3 or min(out) < 1:
        raise JaxoipError(f"an image shape must be three positive sizes (height, width, channels), got {shape!r}")
    return out


def _gaussian_smooth(img: jax.Array, sigma: float) -> jax.Array:
    radius = max(1, int(3 * sigma))
    t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    padded = jnp.pad(img, radius, mode="reflect")
    rows = jax.vmap(lambda r: jnp.convolve(r, k, mode="valid"))(padded)
    return jax.vmap(lambda c: jnp.convolve(c, k, mode="valid"), in_axes=1, out_axes=1)(rows)


def standardize_image(img: Float[Array, "H W ch"]) -> Float[Array, "H W ch"]:
    """Zero mean, unit standard deviation over one image (the scale of standardized MNIST)."""
    return (img - img.mean()) / (img.std() + 1e-8)


def initial_image(
    key: Key[Array, ""],
    factors: Float[ArrayLike, " grids"],
    grids: tuple[tuple[int, int], ...] = DEFAULT_GRIDS,
    size: tuple[int, int] = (28, 28),
    smoothing_sigma: float = 0.0,
    channels: int = 1,
) -> Float[Array, "H W ch"]:
    """One standardized start image of `size` and `channels`; `factors` weights the grids (given for 28x28,
    scaled to `size`) and may be traced."""
    size = (int(size[0]), int(size[1]))
    # Channels first (C, H, W), one draw and one resize for all channels; a grayscale image has no channel axis,
    # as before colour images: (H, W) draws, op for op.
    planes = size if channels == 1 else (channels, *size)
    img = jnp.zeros(planes, jnp.float32)
    for k, grid, f in zip(jax.random.split(key, len(grids)), scaled_grids(grids, size), factors):
        coarse = jax.random.uniform(k, grid if channels == 1 else (channels, *grid), jnp.float32)
        img = img + f * (coarse if grid == size else jax.image.resize(coarse, planes, "cubic"))
    if channels == 1:
        if smoothing_sigma > 0:
            img = _gaussian_smooth(img, smoothing_sigma)
        return standardize_image(img)[..., None]
    if smoothing_sigma > 0:
        img = jnp.stack([_gaussian_smooth(p, smoothing_sigma) for p in img])
    return standardize_image(jnp.moveaxis(img, 0, -1))


def start_images(keys, recipe_index, recipes, shape=DEFAULT_SHAPE):
    """The traced body of every start-image program: image i from `keys[i]` and `recipes[recipe_index[i]]`.
    Not jitted itself: the programs that call it are compiled with `FAST_COMPILE`, which a nested jit cannot
    carry."""
    table = jnp.asarray([r.factors for r in recipes], jnp.float32)
    grids, sigma = recipes[0].grids, recipes[0].smoothing_sigma
    return jax.vmap(lambda k, i: initial_image(k, table[i], grids, shape[:2], sigma, shape[2]))(keys, recipe_index)


@functools.partial(jax.jit, static_argnames=("recipes", "shape"), compiler_options=FAST_COMPILE)
def _initial_images(keys, recipe_index, *, recipes, shape=DEFAULT_SHAPE):
    return start_images(keys, recipe_index, recipes, shape)


def initial_images(
    keys: Key[Array, " n"],
    recipes: Sequence[str | Recipe],
    recipe_index: Int[ArrayLike, " n"] | None = None,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
) -> Float[np.ndarray, "n H W ch"]:
    """A batch of starts of `shape` (H, W, C: the model's input), one per key; image i uses recipe
    `recipes[recipe_index[i]]`.

    Each image depends only on its own key and recipe, never on the rest of the batch. One compiled
    program per recipe set, shape and batch size.
    """
    recipes = get_recipes(recipes)
    shape = check_image_shape(shape)
    idx = np.zeros(keys.shape[0], np.int32) if recipe_index is None else np.asarray(recipe_index, np.int32)
    return np.asarray(_initial_images(keys, idx, recipes=recipes, shape=shape))


@functools.partial(jax.jit, static_argnames=("restarts",))
def _start_keys(root, maps, *, restarts):
    per_map = jax.vmap(lambda m: jax.random.fold_in(root, m))(maps)
    return jax.vmap(lambda k: jax.vmap(lambda r: jax.random.fold_in(k, r))(jnp.arange(restarts, dtype=jnp.uint32)))(
        per_map
    )


def start_keys(seed: int | Key[Array, ""], map_indices: MapIndices, restarts: int) -> Key[Array, "m r"]:
    """Keys (maps, restarts): start r of map m always gets fold_in(fold_in(root, m), r).

    `seed` is an integer or a PRNG key (the root).
    """
    if int(restarts) < 1:
        raise JaxoipError(f"restarts must be at least 1, got {restarts}")
    return _start_keys(as_key(seed), np.asarray(map_indices, np.uint32).reshape(-1), restarts=int(restarts))


@functools.partial(jax.jit, static_argnames=("recipes", "restarts", "stream", "shape"), compiler_options=FAST_COMPILE)
def _seeded_starts(seed, maps, recipe_index, *, recipes, restarts, stream, shape=DEFAULT_SHAPE):
    root = jax.random.fold_in(jax.random.key(seed), stream)
    keys = _start_keys(root, maps, restarts=restarts).reshape(-1)
    return start_images(keys, recipe_index, recipes, shape)


def seeded_starts(
    seed: int,
    stream: int,
    map_indices: MapIndices,
    restarts: int,
    recipes: Sequence[str | Recipe],
    recipe_index: Int[ArrayLike, " m*r"],
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
) -> Float[np.ndarray, "m*r H W ch"]:
    """Start images of `shape` (the model's input), the `r` starts of a map in a row, from an integer seed
    in one compiled call.

    Start r of map m comes from fold_in(fold_in(fold_in(key(seed), stream), m), r), so it is the
    same whichever other maps are drawn; `stream` separates independent uses of one seed.
    """
    recipes = get_recipes(recipes)
    shape = check_image_shape(shape)
    maps = np.asarray(map_indices, np.uint32).reshape(-1)
    idx = np.asarray(recipe_index, np.int32).reshape(-1)
    if idx.shape[0] != maps.shape[0] * restarts:
        raise JaxoipError(f"need {maps.shape[0] * restarts} recipe indices, got {idx.shape[0]}")
    return np.asarray(
        _seeded_starts(
            np.uint32(check_seed(seed)),
            maps,
            idx,
            recipes=recipes,
            restarts=int(restarts),
            stream=int(stream),
            shape=shape,
        )
    )
