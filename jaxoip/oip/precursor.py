"""Precursor scan: which kind of random start (fine or coarse noise) makes each map react at all.

Forward passes only: every map of a layer is measured on the same K starts of every recipe, in one
compiled call. Beside it, each map's activation on real images tells maps dead on data from maps that
are only silent on noise.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Key

from jaxoip.analysis.exemplars import max_node
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import CNN, batched_layer_map, check_cnn
from jaxoip.numerics import DEFAULT_PRECISION, FAST_COMPILE, Precision, as_key, check_seed
from jaxoip.oip import targets
from jaxoip.oip.config import ObjectiveConfig, Terms
from jaxoip.oip.noise import DEFAULT_RECIPES, Recipe, get_recipes, start_images
from jaxoip.oip.objectives import Objective, resolve_objective

if TYPE_CHECKING:
    import pandas as pd


@dataclasses.dataclass
class PrecursorResult:
    """Per map (rows) and recipe (columns): fraction of starts with a positive objective, mean and max."""

    layer_name: str
    recipes: tuple[str, ...]
    frac_active: Float[np.ndarray, "c recipes"]
    mean: Float[np.ndarray, "c recipes"]
    max: Float[np.ndarray, "c recipes"]
    starts: int

    @property
    def best_recipe(self) -> Int[np.ndarray, " c"]:
        """Index of the recipe that activates each map most often (ties: higher mean activation)."""
        score = self.frac_active + 1e-6 * self.mean / (1.0 + self.mean.max())
        return np.argmax(score, axis=1)

    @property
    def silent_on_noise(self) -> Bool[np.ndarray, " c"]:
        """Maps no start of any recipe activates."""
        return self.frac_active.max(axis=1) == 0

    def table(self) -> pd.DataFrame:
        cols = {}
        for r, name in enumerate(self.recipes):
            cols[f"pre_{name}_frac"] = self.frac_active[:, r]
            cols[f"pre_{name}_mean"] = self.mean[:, r]
            cols[f"pre_{name}_max"] = self.max[:, r]
        import pandas as pd  # Only for tables: a scan imports it in the background (jaxoip._prefetch).

        df = pd.DataFrame(cols)
        df.insert(0, "map", np.arange(len(df)))
        df["best_recipe"] = [self.recipes[i] for i in self.best_recipe]
        df["silent_on_noise"] = self.silent_on_noise
        return df


PRECURSOR_STREAM = 0  # fold_in(key(seed), stream) separates the precursor's draws from the search's.


@dataclasses.dataclass(frozen=True)
class MapObjectives:
    """Per-batch reduction (B, H, W, C) -> (B, C): every map's objective (its mean, or node (i, j)).

    Hashable by value, so it serves as a static argument of the compiled layer pass.
    """

    node: tuple[int, int] | None = None

    def __call__(self, acts: jax.Array) -> jax.Array:
        return acts[:, self.node[0], self.node[1], :] if self.node is not None else acts.mean(axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class MapMeansAndMaxima:
    """Per-batch reduction (B, H, W, C) -> every map's mean (B, C) as `MapObjectives()`, its largest node (B, C)
    and that node's flat position (B, C) as `find_exemplars`: the data pass and the exemplars in one pass."""

    def __call__(self, acts: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        return (acts.mean(axis=(1, 2)), *max_node(acts))


def _recipe_keys(root, n_recipes: int, starts: int):
    # Start k of recipe r: split(fold_in(root, r), starts)[k], whatever the other recipes are.
    return jax.vmap(lambda r: jax.random.split(jax.random.fold_in(root, r), starts))(jnp.arange(n_recipes)).reshape(-1)


@functools.partial(jax.jit, static_argnames=("recipes", "starts", "shape"), compiler_options=FAST_COMPILE)
def _precursor_images(seed_or_key, *, recipes, starts, shape):
    root = seed_or_key
    if not jnp.issubdtype(root.dtype, jax.dtypes.prng_key):
        root = jax.random.fold_in(jax.random.key(root), PRECURSOR_STREAM)
    keys = _recipe_keys(root, len(recipes), starts)
    idx = jnp.repeat(jnp.arange(len(recipes), dtype=jnp.int32), starts)
    return start_images(keys, idx, recipes, shape)


def precursor_scan(
    model: CNN,
    layer_name: str = "Conv2D_3",
    recipes: Sequence[str | Recipe] = DEFAULT_RECIPES,
    starts: int = 64,
    key: Key[Array, ""] | int = 0,
    node: tuple[int, int] | None = None,
    precision: Precision = DEFAULT_PRECISION,
    options: ObjectiveConfig | None = None,
    weighted: tuple[Terms, ...] = (),
) -> PrecursorResult:
    """Measures every map of `layer_name` on `starts` random images of each recipe (same images for all maps).

    `key`: an integer seed (the draws come from fold_in(key(seed), PRECURSOR_STREAM), as in `scan_maps`)
    or a PRNG key used as the root directly. `layer_name` may be an `Objective`; with `options` (and
    `weighted`), the maps are its targets (`jaxoip.oip.objectives`: dense nodes, logits, weighted sums).
    """
    objective = _objective(model, layer_name, node, options, weighted)
    if int(starts) < 1:
        raise JaxoipError(f"precursor starts must be at least 1, got {starts}")
    key = np.uint32(check_seed(key)) if isinstance(key, (int, np.integer)) else as_key(key)
    return run_precursor(model, objective, get_recipes(recipes), int(starts), key, precision)


def run_precursor(
    model, objective: Objective, recipes: tuple[Recipe, ...], starts: int, root, precision: Precision
) -> PrecursorResult:
    """`precursor_scan` for a resolved objective, checked recipes and a checked root (seed or key)."""
    shape = tuple(model.config.input_shape)  # Starts of the model's input size and channels.
    images = _precursor_images(root, recipes=recipes, starts=starts, shape=shape)
    # In the screening's full batches: one program for both passes (and values independent of the start count).
    obj = objective_values(model, np.asarray(images), objective, precision, pad=True)  # (R*K, C)
    obj = obj.reshape(len(recipes), starts, -1)
    return PrecursorResult(
        layer_name=objective.layer.name,
        recipes=tuple(r.name for r in recipes),
        frac_active=(obj > 0).mean(axis=1).T,
        mean=obj.mean(axis=1).T,
        max=obj.max(axis=1).T,
        starts=starts,
    )


# A public call's targets without options: every unit's activation (map mean, or node, or dense unit).
UNIT_ACTIVATIONS = ObjectiveConfig(quantity="activation", wake=False)


def _objective(model, target, node, options: ObjectiveConfig | None, weighted) -> Objective:
    """The objective of a public call (`resolve_objective`; default: every unit's activation)."""
    return resolve_objective(check_cnn(model), target, node, options, weighted, default=UNIT_ACTIVATIONS)


def data_activation(
    model: CNN,
    images_std: Float[ArrayLike, "n H W ch"],
    layer_name: str = "Conv2D_3",
    node: tuple[int, int] | None = None,
    precision: Precision = DEFAULT_PRECISION,
    options: ObjectiveConfig | None = None,
    weighted: tuple[Terms, ...] = (),
    pad: bool = False,
) -> Float[np.ndarray, "n c"]:
    """The objective (map mean, or node) of every map (or of the targets `options` and `weighted` describe, or
    of an `Objective` given as `layer_name`) for every standardized image; `pad`: see `objective_values`."""
    objective = _objective(model, layer_name, node, options, weighted)
    return objective_values(model, images_std, objective, precision, pad)


def objective_values(
    model,
    images_std: Float[ArrayLike, "n H W ch"],
    objective: Objective,
    precision: Precision,
    pad: bool = False,
    cache: bool = False,
) -> Float[np.ndarray, "n c"]:
    """Every target's value of `objective` (every map's mean or node, dense unit, or weighted sum) for every
    standardized image, forward only. `pad`: full batches however few the images, so an image's values do
    not depend on how many are evaluated with it; `cache`: a pass over a data set, kept in `jaxoip.passes`
    (`jaxoip.models.cnn.batched_layer_map`)."""
    if objective.custom:
        return targets.batched_target_values(model, images_std, objective, precision, pad=pad, cache=cache)
    # The maps' means by the data pass's program, which gives their maxima too: the precursor's, the screening's
    # and the data's passes are one program (the same bits as a pass of the means alone).
    reduce = MapObjectives(objective.node) if objective.node is not None else MapMeansAndMaxima()
    out = batched_layer_map(model, images_std, objective.layer, reduce, precision=precision, pad=pad, cache=cache)
    return np.asarray(out if objective.node is not None else out[0])
