"""Public entry points refuse bad arguments with one JaxoipError: non-finite images and weights (NaN
propagates, and no analysis reports numbers computed from it), bad targets, wrong argument types."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxoip.analysis.activations import class_probabilities, dataset_activations, image_activations
from jaxoip.analysis.exemplars import find_exemplars
from jaxoip.analysis.grid_comparison import compare_images
from jaxoip.analysis.grids import layer_grid
from jaxoip.analysis.predictions import predict_split
from jaxoip.data.inputs import InputImage
from jaxoip.data.mnist import MNIST
from jaxoip.errors import DataError, DivergenceError
from jaxoip.models.cnn import max_pool
from jaxoip.oip.search import OIPConfig, search_oips


@pytest.fixture(scope="module")
def small(mnist):
    """The first 64 images of each split: the checks, not the data, are under test."""
    return MNIST(mnist.train_images[:64], mnist.train_labels[:64], mnist.test_images[:64], mnist.test_labels[:64], "x")


@pytest.fixture(scope="module")
def nan_model(reference):
    """The reference model with one NaN weight in Conv2D_1's kernel."""
    model = nnx.clone(reference.model)
    model.Conv2D_1.kernel[...] = model.Conv2D_1.kernel[...].at[0, 0, 0, 0].set(jnp.nan)
    return dataclasses.replace(reference, model=model)


def test_max_pool_propagates_nan():
    # XLA:CPU's vectorized max reduction turned a window of NaNs into -inf at this size (issue: two paths).
    x = np.ones((2, 26, 26, 32), np.float32)
    x[..., 0] = np.nan
    x[0, 0, 0, 5] = np.nan
    out = np.asarray(max_pool(jnp.asarray(x), 2))
    assert np.isnan(out[..., 0]).all() and np.isnan(out[0, 0, 0, 5])
    assert np.isfinite(np.delete(out, [0, 5], axis=-1)).all() and np.isfinite(out[1, ..., 5]).all()


def test_nan_weights_are_refused_by_every_evaluation(nan_model, small):
    cause = r"non-finite values from layer .*NaN or infinite weights \(Conv2D_1.kernel\)"
    with pytest.raises(DivergenceError, match=cause):
        nan_model.layer_output(small.test_images[:2], "Dense_2")
    with pytest.raises(DivergenceError, match=cause):
        predict_split(nan_model, small, "test")
    with pytest.raises(DivergenceError, match=cause):
        dataset_activations(nan_model, small, "Conv2D_3")
    with pytest.raises(DivergenceError, match=cause):
        find_exemplars(nan_model, small, "Conv2D_2", k=2)
    with pytest.raises(DivergenceError, match=cause):
        image_activations(nan_model, small.test_images[:2], "Dense_1")
    with pytest.raises(DivergenceError, match=cause):
        layer_grid(nan_model, "Conv2D_3", small.test_images[0])


def test_finite_model_still_reports(reference, small):
    pred = predict_split(reference, small, "test")
    assert np.isfinite(pred.probabilities).all() and pred.accuracy > 0.9


def test_non_finite_images_are_refused_before_any_pass(reference, small):
    bad = np.array(small.test_images[:3], np.float32)
    bad[1, 4, 4, 0] = np.nan
    inf = bad.copy()
    inf[1, 4, 4, 0] = np.inf
    nan_data = dataclasses.replace(small, test_images=bad)
    one_line = r"hold NaN or infinite pixels \(1 of 3 images, the first at index 1\)"
    for images in (bad, inf):
        with pytest.raises(DataError, match=one_line):
            reference.layer_output(images, "Conv2D_1")
        with pytest.raises(DataError, match=one_line):
            image_activations(reference, images, "Conv2D_1")
        with pytest.raises(DataError, match=one_line):
            class_probabilities(reference, images)
    with pytest.raises(DataError, match="the test images hold NaN"):
        dataset_activations(reference, nan_data, "Conv2D_1")
    with pytest.raises(DataError, match="the test images hold NaN"):
        predict_split(reference, nan_data)
    with pytest.raises(DataError, match="the test images hold NaN"):
        find_exemplars(reference, nan_data, "Conv2D_3", k=2)
    with pytest.raises(DataError, match="NaN or infinite pixels"):
        layer_grid(reference, "Conv2D_3", bad[1])
    with pytest.raises(DataError, match="NaN or infinite pixels"):
        layer_grid(reference, "Conv2D_3", InputImage(bad[1], "mine"))
    with pytest.raises(DataError, match="NaN or infinite pixels"):
        compare_images(reference, "Conv2D_3", [small.test_images[0]], [inf[1]])
    with pytest.raises(DataError, match="the start images hold NaN"):
        search_oips(reference.model, "Conv2D_3", [0, 1, 2], reference.standardization(bad), OIPConfig(steps=2))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1e400*4", "weight of target term '1e400\\*4' .* is not a finite number"),
        ("4-4", "target '4-4' is zero"),
        ("0*4", "target '0\\*4' is zero"),
        ("0*4+0*9", "is zero"),
    ],
)
def test_parse_terms_refuses_infinite_and_zero_targets(text, message):
    from jaxoip.errors import JaxoipError
    from jaxoip.oip.targets import parse_terms

    with pytest.raises(JaxoipError, match=message):
        parse_terms(text)


def test_parse_terms_keeps_good_sums():
    from jaxoip.oip.targets import parse_terms

    assert parse_terms("4-9") == ((4, 1.0), (9, -1.0))
    assert parse_terms("4+4-4,0*9") == ((4, 1.0),)  # Zero-weight units dropped, repeats added.


@pytest.mark.parametrize(
    ("weighted", "message"),
    [
        ((((4, float("nan")),),), "weight of unit 4 must be a finite number"),
        ((((4, float("inf")),),), "weight of unit 4 must be a finite number"),
        ((((4, 1.0), (4, -1.0)),), "weighted target 0 is zero"),
        ((((4, 1e308), (5, 1e308)),), "weights overflow"),
        ((((4.5, 1.0),),), "unit must be an integer"),
        ((((-1, 1.0),),), "unit must be at least 0"),
        (((4, 1.0),), "a term must be a \\(unit, weight\\) pair"),
        (((),), "needs at least one term"),
        (5, "weighted must be sums"),
    ],
)
def test_weighted_targets_are_refused_in_one_line(weighted, message):
    from jaxoip.errors import JaxoipError
    from jaxoip.oip.config import check_weighted

    with pytest.raises(JaxoipError, match=message):
        check_weighted(weighted)


@pytest.mark.parametrize("k", [0, -3, 2.5, None])
def test_find_exemplars_refuses_a_bad_k(reference, small, k):
    from jaxoip.errors import JaxoipError

    with pytest.raises(JaxoipError, match="k \\(exemplars per map\\) must be"):
        find_exemplars(reference, small, "Conv2D_3", k=k)


def _public_calls(ref, data):
    """(name, call with one argument replaced by `bad`) for the public functions that take a model, path, data,
    layer name, config or targets."""
    import jaxoip

    cfg = OIPConfig(steps=2)
    x = np.zeros((1, 28, 28, 1), np.float32)
    return {
        "load_model": lambda bad: jaxoip.load_model(bad),
        "scan_maps(trained)": lambda bad: jaxoip.scan_maps(bad, progress=False),
        "scan_maps(config)": lambda bad: jaxoip.scan_maps(ref, config=bad, progress=False),
        "scan_maps(data)": lambda bad: jaxoip.scan_maps(ref, data=bad, progress=False) if bad is not None else 1 / 0,
        "write_scan": lambda bad: jaxoip.write_scan(bad, "unused_out"),
        "facet_images": lambda bad: jaxoip.facet_images(bad),
        "search_oips(model)": lambda bad: jaxoip.search_oips(bad, "Conv2D_3", [0], x, cfg),
        "search_oips(layer)": lambda bad: jaxoip.search_oips(ref.model, bad, [0], x, cfg),
        "search_oips(cfg)": lambda bad: jaxoip.search_oips(ref.model, "Conv2D_3", [0], x, bad),
        "precursor_scan": lambda bad: jaxoip.precursor_scan(bad),
        "data_activation": lambda bad: jaxoip.data_activation(bad, x),
        "batched_layer_map": lambda bad: jaxoip.batched_layer_map(bad, x, "Conv2D_1"),
        "batched_layer_map(layer)": lambda bad: jaxoip.batched_layer_map(ref.model, x, bad),
        "dataset_activations(trained)": lambda bad: jaxoip.dataset_activations(bad, data, "Conv2D_1"),
        "dataset_activations(data)": lambda bad: jaxoip.dataset_activations(ref, bad, "Conv2D_1"),
        "predict_split(trained)": lambda bad: jaxoip.predict_split(bad, data),
        "predict_split(data)": lambda bad: jaxoip.predict_split(ref, bad),
        "find_exemplars(trained)": lambda bad: jaxoip.find_exemplars(bad, data),
        "find_exemplars(data)": lambda bad: jaxoip.find_exemplars(ref, bad),
        "find_exemplars(layer)": lambda bad: jaxoip.find_exemplars(ref, data, bad),
        "layer_grid(trained)": lambda bad: jaxoip.layer_grid(bad, "Conv2D_1", x[0]),
        "layer_grid(layer)": lambda bad: jaxoip.layer_grid(ref, bad, x[0]),
        "layer_grid(image)": lambda bad: jaxoip.layer_grid(ref, "Conv2D_1", bad),
        "compare_images": lambda bad: jaxoip.compare_images(bad, "Conv2D_1", [x[0]], [x[0]]),
        "misclassified": lambda bad: jaxoip.misclassified(bad),
        "least_confident": lambda bad: jaxoip.least_confident(bad),
        "evaluate_model(trained)": lambda bad: jaxoip.evaluate_model(bad, data),
        "evaluate_model(data)": lambda bad: jaxoip.evaluate_model(ref, bad),
        "train(cfg)": lambda bad: jaxoip.train(bad, data=data, progress=False),
        "train(data)": lambda bad: jaxoip.train(data=bad, progress=False) if bad is not None else 1 / 0,
        "train_seeds": lambda bad: jaxoip.train_seeds(bad, data=data, progress=False),
        "compare_models(models)": lambda bad: jaxoip.compare_models(bad, data),
        "compare_models(model)": lambda bad: jaxoip.compare_models([ref, bad], data),
        "compare_models(data)": lambda bad: jaxoip.compare_models([ref, ref], bad),
        "compare_models(config)": lambda bad: jaxoip.compare_models([ref, ref], data, bad),
        "init_model": lambda bad: jaxoip.init_model(bad),
        "layer_names": lambda bad: jaxoip.layer_names(bad),
        "layer_shapes": lambda bad: jaxoip.layer_shapes(bad),
        "receptive_field": lambda bad: jaxoip.receptive_field(bad, "Conv2D_1", 0, 0),
        "parse_terms": lambda bad: jaxoip.parse_terms(bad),
        "search_arguments(targets)": lambda bad: jaxoip.search_arguments(bad),
        "load_mnist": lambda bad: jaxoip.load_mnist(bad) if bad is not None else 1 / 0,
    }


CALLS = list(_public_calls(None, None))


@pytest.mark.parametrize("bad", [None, 123, "Conv2D_1", 1.5], ids=["None", "int", "str", "float"])
@pytest.mark.parametrize("call", CALLS)
def test_public_functions_refuse_wrong_types_with_a_jaxoip_error(reference, small, call, bad):
    from jaxoip.errors import JaxoipError

    fn = _public_calls(reference, small)[call]
    try:
        fn(bad)
    except JaxoipError as e:
        assert "\n" not in str(e)
    except ZeroDivisionError:  # None is these functions' own default.
        pass
    except Exception as e:
        # A string is a valid layer name, image spec, path or target, so it may fail later, but as a JaxoipError.
        pytest.fail(f"{call}({bad!r}) raised {type(e).__name__}: {e}")
    else:
        assert isinstance(bad, str), f"{call}({bad!r}) was accepted"


def test_save_model_and_write_report_refuse_wrong_types(tiny_trained, tmp_path):
    from jaxoip.errors import JaxoipError, OutputError
    from jaxoip.models.checkpoint import save_model
    from jaxoip.seeds.report import write_report

    with pytest.raises(OutputError, match="the output folder must be a path, got NoneType"):
        save_model(None, tiny_trained)
    with pytest.raises(JaxoipError, match="must be a TrainedModel"):
        save_model(tmp_path / "m", "not a model")
    with pytest.raises(JaxoipError, match="the comparison must be a SeedComparison"):
        write_report(None, tmp_path / "r")
    assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()
