"""Precursor scan: which kind of random start (fine or coarse noise) makes each map react at all.

Forward passes only: every map of a layer is measured on the same K starts of every recipe, in one
compiled call. Beside it, each map's activation on real images tells maps dead on data from maps that
are only silent on noise.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxoip import targets
from jaxoip.model import CNN, batched_layer_map
from jaxoip.noise import DEFAULT_RECIPES, get_recipes, initial_images
from jaxoip.oip import OIPConfig, check_target, map_objective


@dataclasses.dataclass
class PrecursorResult:
    """Per map (rows) and recipe (columns): fraction of starts with a positive objective, mean and max."""

    layer_name: str
    recipes: tuple[str, ...]
    frac_active: np.ndarray  # (C, R)
    mean: np.ndarray  # (C, R)
    max: np.ndarray  # (C, R)
    starts: int

    @property
    def best_recipe(self) -> np.ndarray:
        """Index of the recipe that activates each map most often (ties: higher mean activation)."""
        score = self.frac_active + 1e-6 * self.mean / (1.0 + self.mean.max())
        return np.argmax(score, axis=1)

    @property
    def silent_on_noise(self) -> np.ndarray:
        """Maps no start of any recipe activates."""
        return self.frac_active.max(axis=1) == 0

    def table(self) -> pd.DataFrame:
        cols = {}
        for r, name in enumerate(self.recipes):
            cols[f"pre_{name}_frac"] = self.frac_active[:, r]
            cols[f"pre_{name}_mean"] = self.mean[:, r]
            cols[f"pre_{name}_max"] = self.max[:, r]
        df = pd.DataFrame(cols)
        df.insert(0, "map", np.arange(len(df)))
        df["best_recipe"] = [self.recipes[i] for i in self.best_recipe]
        df["silent_on_noise"] = self.silent_on_noise
        return df


@functools.lru_cache(maxsize=32)
def _objectives_fn(layer_name: str, node):
    """Per image, the objective of every map; one function object per (layer, node) so compiles are reused."""

    def fn(acts):
        return jax.vmap(lambda a: jax.vmap(lambda m: map_objective(a, m, node))(jnp.arange(a.shape[-1])))(acts)

    return fn


def precursor_scan(
    model: CNN,
    layer_name: str = "Conv2D_3",
    recipes=DEFAULT_RECIPES,
    starts: int = 64,
    key: jax.Array | int = 0,
    node: tuple[int, int] | None = None,
    cfg: OIPConfig | None = None,
) -> PrecursorResult:
    """Measures every map of `layer_name` on `starts` random images of each recipe (same images for all maps).

    With `cfg`, the maps are its targets (`jaxoip.targets`: dense nodes, logits, weighted sums).
    """
    recipes = get_recipes(recipes)
    check_target(model.config, layer_name, [0], node, cfg)
    key = jax.random.key(key) if isinstance(key, int) else key
    # Start k of recipe r: fold_in(fold_in(key, r), k), whatever the other recipes are.
    keys = jax.vmap(lambda r: jax.random.split(jax.random.fold_in(key, r), starts))(jnp.arange(len(recipes)))
    idx = jnp.repeat(jnp.arange(len(recipes)), starts)
    images = initial_images(keys.reshape(-1), recipes, idx)
    obj = _values(model, images, layer_name, node, cfg)  # (R*K, C)
    obj = obj.reshape(len(recipes), starts, -1)
    return PrecursorResult(
        layer_name=layer_name,
        recipes=tuple(r.name for r in recipes),
        frac_active=(obj > 0).mean(axis=1).T,
        mean=obj.mean(axis=1).T,
        max=obj.max(axis=1).T,
        starts=starts,
    )


def _values(model, images, layer_name, node, cfg) -> np.ndarray:
    if cfg is not None and targets.is_custom(model.config, layer_name, cfg):
        return targets.batched_target_values(model, images, layer_name, node, cfg)
    objectives = _objectives_fn(layer_name, None if node is None else tuple(node))
    return np.asarray(batched_layer_map(model, images, layer_name, objectives))


def data_activation(
    model: CNN, images_std, layer_name: str = "Conv2D_3", node: tuple[int, int] | None = None,
    cfg: OIPConfig | None = None,
) -> np.ndarray:
    """The objective (map mean, or node) of every map (or `cfg`'s target) for every standardized image: (N, C)."""
    check_target(model.config, layer_name, [0], node, cfg)
    return _values(model, images_std, layer_name, node, cfg)
