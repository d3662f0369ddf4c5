"""Annotations: they resolve, arrays carry jaxtyping dtypes and shapes, and a few shapes match real outputs."""

import dataclasses
import importlib
import inspect
import pkgutil
import typing

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pandas
import pytest
from jaxtyping import Array, Bool, Float, Int, Key

import jaxoip
from jaxoip.analysis import activations, grids, predictions
from jaxoip.data.mnist import Standardization
from jaxoip.models.cnn import ModelConfig, TrainedModel, batched_layer_map, init_model
from jaxoip.oip import noise, precursor
from jaxoip.oip import similarity as oip_similarity
from jaxoip.oip.search import OIPConfig, OIPResult, search_oips
from jaxoip.seeds import similarity

PUBLIC = {name: getattr(jaxoip, name) for name in jaxoip.__all__}
# Names an annotation may use without importing them at run time (`if TYPE_CHECKING:` against a cycle, or to
# import pandas only where a table is built).
HINT_NAMES = {**PUBLIC, "pd": pandas}

# Public functions of `jaxoip` that take and return no arrays (models, configs, folders, tables).
NO_ARRAYS = {
    "compare_models",
    "count_compiles",
    "evaluate_model",
    "find_exemplars",
    "from_nnx",
    "from_torch",
    "from_keras",
    "layer_names",
    "microscope_layers",
    "run_microscope",
    "run_scan",
    "scan_layer",
    "objective",
    "channel",
    "layer_shapes",
    "least_confident",
    "load_images",
    "load_mnist",
    "load_model",
    "load_reference_model",
    "misclassified",
    "parse_terms",
    "precision_scope",
    "predict_split",
    "receptive_field",
    "save_model",
    "style_config",
    "train",
    "train_seeds",
    "upgrade_checkpoint",
    "write_report",
    "write_scan",
}
# Library modules whose helpers still carry bare `np.ndarray` / `jax.Array` annotations (their functions in
# `jaxoip.__all__` are checked all the same). Remove a module once it is converted.
NOT_YET_CONVERTED = {
    "models.checkpoint",
    "models.cnn",
    "models.keras",
    "numerics",
    "oip.facets",
    "oip.param",
    "oip.search",
    "oip.targets",
    "oip.transforms",
    "figures",
    "analysis.figures",
    "models.figures",
    "oip.figures",
    "seeds.compare",
    "seeds.features",
    "oip.similarity",
    "seeds.oips",
    "seeds.figures",
    "seeds.report",
    "seeds.similarity",
}


def _hints(obj) -> dict:
    return typing.get_type_hints(obj, localns=HINT_NAMES)


def _leaves(annotation):
    """The annotation and every type inside it (unions, generics, callables)."""
    yield annotation
    for arg in typing.get_args(annotation):
        if isinstance(arg, list):  # Callable[[...], ...]
            for a in arg:
                yield from _leaves(a)
        else:
            yield from _leaves(arg)


def _is_jaxtyping(t) -> bool:
    return isinstance(t, type) and issubclass(t, jaxtyping.AbstractArray)


def _bare_arrays(annotation) -> list:
    return [t for t in _leaves(annotation) if t is np.ndarray or t is jax.Array]


def _has_jaxtyping(annotation) -> bool:
    return any(_is_jaxtyping(t) for t in _leaves(annotation))


def _function(obj):
    obj = inspect.unwrap(obj)
    return obj if inspect.isfunction(obj) else None


def _library_functions():
    """(module name, function name, function) of every public function defined in a library module."""
    out = []
    for info in pkgutil.walk_packages(jaxoip.__path__, "jaxoip."):
        short = info.name.removeprefix("jaxoip.")
        if info.ispkg or any(part.startswith("_") for part in short.split(".")) or short.startswith("cli"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            f = _function(obj) if not name.startswith("_") else None
            if f is not None and f.__module__ == module.__name__:
                out.append((short, name, f))
    return out


def _class_members(cls):
    """Functions and property getters defined on a public class."""
    for name, member in vars(cls).items():
        if isinstance(member, property):
            yield f"{cls.__name__}.{name}", member.fget
        elif inspect.isfunction(member) and not name.startswith("_"):
            yield f"{cls.__name__}.{name}", member


def test_every_public_annotation_resolves():
    for obj in PUBLIC.values():
        if isinstance(obj, type) or _function(obj) is not None:
            _hints(obj)  # Raises NameError or TypeError if one does not.
        if isinstance(obj, type):
            for member_name, member in _class_members(obj):
                assert _hints(member) is not None, member_name


def test_public_functions_with_arrays_use_jaxtyping():
    functions = {name: _function(obj) for name, obj in PUBLIC.items() if _function(obj) is not None}
    assert set(NO_ARRAYS) <= set(functions), set(NO_ARRAYS) - set(functions)
    for name, f in functions.items():
        hints = _hints(f)
        assert not any(_bare_arrays(h) for h in hints.values()), f"{name}: a bare array annotation"
        if name in NO_ARRAYS:
            assert not any(_has_jaxtyping(h) for h in hints.values()), f"{name} takes arrays: drop it from NO_ARRAYS"
        else:
            assert any(_has_jaxtyping(h) for h in hints.values()), f"{name}: annotate its arrays with jaxtyping"
    # Where array arguments have no annotation at all, the names give them away.
    for name, f in functions.items():
        for param in inspect.signature(f).parameters.values():
            assert param.annotation is not inspect.Parameter.empty or param.kind is param.VAR_KEYWORD, (
                f"{name}({param.name}): no annotation"
            )


def test_public_classes_annotate_array_fields_with_jaxtyping():
    for name, cls in PUBLIC.items():
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        for field, hint in _hints(cls).items():
            assert not _bare_arrays(hint), f"{name}.{field}: a bare array annotation"
        for member_name, member in _class_members(cls):
            for arg, hint in _hints(member).items():
                assert not _bare_arrays(hint), f"{member_name} ({arg}): a bare array annotation"


def test_library_modules_annotate_arrays_with_jaxtyping():
    functions = _library_functions()
    assert len(functions) > 100  # The walk found the library.
    modules = {module for module, _, _ in functions}
    assert NOT_YET_CONVERTED <= modules, NOT_YET_CONVERTED - modules
    bare = [
        f"jaxoip.{module}.{name}"
        for module, name, f in functions
        if module not in NOT_YET_CONVERTED and any(_bare_arrays(h) for h in _hints(f).values())
    ]
    assert not bare, f"bare np.ndarray / jax.Array annotations (use jaxtyping): {bare}"


# --- Declared shapes against real outputs ------------------------------------------------------------------


@pytest.fixture(scope="module")
def untrained():
    return TrainedModel(model=init_model(ModelConfig(), 0), standardization=Standardization(0.13, 0.31))


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 28, 28, 1)).astype(np.float32)


def _map_means(acts):
    return acts.mean(axis=(1, 2))


def test_layer_outputs_match_their_shapes(untrained):
    pixels = _pixels(3)
    acts = activations.image_activations(untrained, pixels, "Conv2D_3")
    assert isinstance(acts, Float[np.ndarray, "3 h w c"]) and acts.ndim == 4
    dense = activations.image_activations(untrained, pixels, "Dense_1")
    assert isinstance(dense, Float[np.ndarray, "3 nodes"])
    probs = activations.class_probabilities(untrained, pixels)
    assert isinstance(probs, Float[np.ndarray, "3 10"])
    means = batched_layer_map(untrained.model, untrained.standardization(pixels), "Conv2D_1", _map_means)
    assert isinstance(means, Float[np.ndarray, "3 c"])
    grid = grids.activation_grid(acts[0], per_row=16)
    h, w, c = acts.shape[1:]
    assert isinstance(grid, Float[np.ndarray, "grid_h grid_w"])
    assert grid.shape == (-(-c // 16) * h, 16 * w)
    assert isinstance(grids.standardize_maps(acts[0]), Float[np.ndarray, "h w c"])
    layer = grids.layer_grid(untrained, "Conv2D_2", pixels[0])
    for field, hint in _hints(grids.LayerGrid).items():
        if _is_jaxtyping(hint):
            assert isinstance(getattr(layer, field), hint), field


def test_predictions_and_confusions_match_their_shapes():
    labels = np.array([0, 1, 2, 2], np.int32)
    probs = np.eye(3)[[0, 2, 2, 1]]
    pred = predictions.Predictions("test", labels, probs)
    assert isinstance(pred.predicted, Int[np.ndarray, " n"]) and pred.predicted.shape == labels.shape
    assert isinstance(pred.confidence, Float[np.ndarray, " n"])
    assert isinstance(pred.confusion(), Int[np.ndarray, "3 3"])
    assert isinstance(predictions.confusion_matrix(labels, labels, 3), Int[np.ndarray, "classes classes"])


def test_search_and_starts_match_their_shapes(untrained):
    keys = noise.start_keys(0, np.array([1, 4]), 3)
    assert isinstance(keys, Key[Array, "2 3"])
    starts = noise.initial_images(keys.reshape(-1), noise.DEFAULT_RECIPES[:2], np.array([0, 1] * 3))
    assert isinstance(starts, Float[np.ndarray, "6 28 28 1"])
    maps = np.array([0, 0, 0, 5, 5, 5])
    res = search_oips(untrained.model, "Conv2D_3", maps, starts, OIPConfig(steps=3, snapshot_steps=(1,)))
    for field, hint in _hints(OIPResult).items():
        value = getattr(res, field)
        if _is_jaxtyping(hint) or (value is not None and _has_jaxtyping(hint)):
            hint = next(t for t in _leaves(hint) if _is_jaxtyping(t))
            assert isinstance(value, hint), field
            assert value.shape[0] == len(maps), field
    objective = precursor.data_activation(untrained.model, starts, "Conv2D_3")
    assert isinstance(objective, Float[np.ndarray, "6 c"])


def test_similarities_match_their_shapes():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(50, 6))
    corr = similarity.correlation_matrix(x, y)
    assert isinstance(corr, Float[np.ndarray, "4 6"])
    rows, cols = similarity.match_channels(corr)
    assert isinstance(rows, Int[np.ndarray, " pairs"]) and rows.shape == cols.shape == (4,)
    best, _ = similarity.semi_match(corr)
    assert isinstance(best, Int[np.ndarray, "4"])
    a, b = jnp.asarray(rng.normal(size=(2, 28, 28, 1))), jnp.asarray(rng.normal(size=(3, 28, 28, 1)))
    signed, unsigned = oip_similarity.shift_similarity_matrix(a, b, 3)
    assert isinstance(signed, Float[Array, "2 3"]) and isinstance(unsigned, Float[Array, "2 3"])
    live = np.ones((2, 2), bool)
    out = oip_similarity.cross_activation(rng.uniform(1, 2, (2, 2, 2)), rng.uniform(1, 2, (2, 2)), live, live)
    assert all(isinstance(v, Float[np.ndarray, "2"]) for v in out.values())
    assert isinstance(live, Bool[np.ndarray, "m r"])


def test_the_dimension_names_are_documented():
    import jaxoip.shapes as jt

    doc = jt.__doc__
    for dim in ("`n`", "`H W ch`", "`h w c`", "`*layer`", "`classes`", "`m`", "`r`", "`c_a c_b`"):
        assert dim in doc, dim
    assert isinstance(_pixels(2), Float[np.ndarray, "n H W ch"]) and isinstance(_pixels(2), jt.LayerActivations)
