"""Seed comparison: statistics, matching, seed-batched training, the command end to end, bad input."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxoip import cli
from jaxoip.cli.compare_seeds import main
from jaxoip.compiles import count_compiles
from jaxoip.errors import JaxoipError
from jaxoip.models.checkpoint import save_model
from jaxoip.models.cnn import ModelConfig, TrainedModel, init_model
from jaxoip.models.multiseed import train_seeds
from jaxoip.models.train import TrainConfig, train
from jaxoip.seeds import compare, features, similarity


@pytest.fixture(scope="module")
def small_mnist(mnist):
    """256 training and 300 test images: enough to train a few steps and to compare features."""
    return dataclasses.replace(
        mnist,
        train_images=mnist.train_images[:256],
        train_labels=mnist.train_labels[:256],
        test_images=mnist.test_images[:300],
        test_labels=mnist.test_labels[:300],
    )


@pytest.fixture(scope="module")
def seed_models(small_mnist):
    return train_seeds([0, 1], TrainConfig(epochs=1), data=small_mnist, progress=False)


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_train_seeds_equals_training_each_seed_alone(small_mnist, seed_models):
    # The second slot of the seed batch: its own init, batch order and optimizer state.
    for seed, batched in [(1, seed_models[1])]:
        alone = train(TrainConfig(epochs=1, seed=seed), data=small_mnist, progress=False)
        for a, b in zip(_params(batched.model), _params(alone.model)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batched.history["val_accuracy"], alone.history["val_accuracy"], atol=1e-6)
        assert batched.train_config == alone.train_config
        assert batched.standardization == alone.standardization
    # Different seeds really differ.
    assert not np.allclose(np.asarray(_params(seed_models[0].model)[0]), np.asarray(_params(seed_models[1].model)[0]))


def _rng_features(n=400, d=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, d + 3)) + 0.5 * rng.normal(size=(n, d + 3))
    return x, y


def test_cka_identity_permutation_and_scaling():
    x, y = _rng_features()
    perm = np.random.default_rng(1).permutation(y.shape[1])
    for debiased in (False, True):
        np.testing.assert_allclose(compare.linear_cka(x, x, debiased), 1.0, rtol=1e-10)
        base = compare.linear_cka(x, y, debiased)
        assert 0.2 < base < 0.99
        np.testing.assert_allclose(compare.linear_cka(x, 7.5 * y[:, perm], debiased), base, rtol=1e-10)
        np.testing.assert_allclose(compare.linear_cka(0.01 * x[:, ::-1], y, debiased), base, rtol=1e-10)


def _hsic_unbiased_gram(k, g):
    """Song et al.'s estimator on explicit n x n Gram matrices."""
    n = k.shape[0]
    k, g = k - np.diag(np.diag(k)), g - np.diag(np.diag(g))
    one = np.ones(n)
    return (
        np.trace(k @ g) + (one @ k @ one) * (one @ g @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ k @ g @ one
    ) / (n * (n - 3))


def test_debiased_cka_equals_gram_matrix_estimator():
    x, y = _rng_features(n=60, d=5)
    x, y = x + 3.0, y - 1.0  # Uncentered on purpose: the estimator is centering-free.
    k, g = x @ x.T, y @ y.T
    expected = _hsic_unbiased_gram(k, g) / math.sqrt(_hsic_unbiased_gram(k, k) * _hsic_unbiased_gram(g, g))
    np.testing.assert_allclose(compare.linear_cka(x, y, debiased=True), expected, rtol=1e-8)


def test_debiased_cka_of_independent_features_is_near_zero():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 40)), rng.normal(size=(500, 40))
    biased, debiased = compare.linear_cka(x, y), compare.linear_cka(x, y, debiased=True)
    assert abs(debiased) < 0.02
    assert biased > 0.05  # The biased estimator is far from 0 at this n / d.


def test_correlation_and_dead_channels_are_excluded_not_nan():
    x, y = _rng_features(d=6)
    x[:, 2] = 0.0  # A dead ReLU channel.
    corr = compare.correlation_matrix(x, y)
    live = np.ones(6, bool)
    live[2] = False
    np.testing.assert_allclose(corr[live], np.corrcoef(x[:, live].T, y.T)[:5, 5:], atol=1e-10)
    assert np.all(corr[2] == 0)
    metrics, detail = similarity.pair_metrics(
        corr, similarity.live_channels(x), similarity.live_channels(y), (0.5, 0.5), (0.5, 0.7, 0.9), 0.3
    )
    assert metrics["dead_a"] == 1 and metrics["live_a"] == 5 and len(detail["a"]) == 5
    assert 2 not in detail["a"]
    assert all(math.isfinite(v) for v in metrics.values())


def _permuted_copy(model, conv_layer: str, perm: np.ndarray):
    """The same network with the channels of conv_layer reordered (channel j := old channel perm[j]).

    The next layer's input weights are permuted to match, so the network computes the same function.
    """
    graphdef, state = nnx.split(model)
    p = jax.tree.map(lambda a: a, nnx.to_pure_dict(state))
    p[conv_layer]["kernel"] = p[conv_layer]["kernel"][..., perm]
    p[conv_layer]["bias"] = p[conv_layer]["bias"][perm]
    nxt = {"Conv2D_1": "Conv2D_2", "Conv2D_2": "Conv2D_3"}.get(conv_layer)
    if nxt:
        p[nxt]["kernel"] = p[nxt]["kernel"][:, :, perm, :]
    else:  # Conv2D_3 feeds the flatten (h, w, c order) of Dense_1.
        k = p["Dense_1"]["kernel"]
        c = len(perm)
        p["Dense_1"]["kernel"] = k.reshape(-1, c, k.shape[-1])[:, perm, :].reshape(k.shape)
    nnx.replace_by_pure_dict(state, p)
    return nnx.merge(graphdef, state)


def test_matching_recovers_a_known_permutation(seed_models, small_mnist):
    trained = seed_models[0]
    perm1 = np.random.default_rng(0).permutation(32)
    perm3 = np.random.default_rng(1).permutation(128)
    model = _permuted_copy(_permuted_copy(trained.model, "Conv2D_1", perm1), "Conv2D_3", perm3)
    copy = dataclasses.replace(trained, model=model)
    x = jnp.asarray(trained.standardization(small_mnist.test_images[:64]))
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(trained.model(x)), rtol=1e-5, atol=1e-6)

    cfg = compare.CompareConfig(layers=("Conv2D_1", "Conv2D_3"), oip_layer=None, bootstrap=5, max_samples=20_000)
    result = compare.compare_models([trained, copy], small_mnist, cfg)
    for layer, perm in (("Conv2D_1", perm1), ("Conv2D_3", perm3)):
        d = result.details[(layer, "real", (0, 1))]
        live = result.live[(layer, 0)]
        # Channel a of the original is channel inverse_perm[a] of the copy.
        np.testing.assert_array_equal(d["b"], np.argsort(perm)[d["a"]])
        np.testing.assert_array_equal(d["a"], np.flatnonzero(live))
        np.testing.assert_allclose(d["corr"], 1.0, atol=1e-5)
        t = result.table(layer).set_index("metric")
        np.testing.assert_allclose(t.loc["cka_linear", "mean"], 1.0, atol=1e-6)
        np.testing.assert_allclose(t.loc["cka_debiased", "mean"], 1.0, atol=1e-6)
        assert t.loc["in_place", "mean"] == np.sum(perm[live[perm]] == np.flatnonzero(live[perm]))
        assert t.loc["matched_corr", "null_shuffled"] < 0.9
    # One compiled feature pass per layer and shape, shared by every model of the architecture.
    with count_compiles() as count:
        a, b = (
            features.layer_features(m, small_mnist.test_images[:50], "Conv2D_3", batch_size=25) for m in (trained, copy)
        )
    assert count.programs <= 1  # 0 when an earlier test already built it.
    np.testing.assert_allclose(a, b[..., np.argsort(perm3)], rtol=1e-5, atol=1e-5)


def test_compare_seeds_end_to_end(tmp_path, capsys, mnist):
    out = tmp_path / "report"
    models_out = out / "models"
    argv = [
        "--seeds", "2", "--epochs", "1", "--train-subset", "512", "--test-subset", "300",
        "--max-samples", "20000", "--bootstrap", "10", "--oip-steps", "5", "--oip-restarts", "2",
        "--oip-maps", "3", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert cli.run(main, argv) == 0
    printed = capsys.readouterr().out
    for layer in ("Conv2D_1", "Conv2D_2", "Conv2D_3"):
        assert f"{layer}: same features?" in printed
        assert (out / f"corr_{layer}.png").stat().st_size > 0
    assert (out / "oips_Conv2D_3.png").is_file() and (out / "correlations.npz").is_file()
    report = (out / "report.md").read_text()
    assert "| mean matched r (Hungarian) |" in report and "null: untrained" in report
    assert "(features and OIP search): **highest**" in report

    def no_nan(text):
        raise AssertionError(f"{text} in results.json")

    res = json.loads((out / "results.json").read_text(), parse_constant=no_nan)
    lay = res["layers"]["Conv2D_3"]
    pair = lay["pairs"]["seed_0 vs seed_1"]
    assert set(pair) == {"real", "shuffled", "untrained"}
    assert 0 < pair["real"]["metrics"]["matched_corr"] <= 1
    assert pair["real"]["metrics"]["matched_corr"] > pair["shuffled"]["metrics"]["matched_corr"]
    metrics = {r["metric"] for r in lay["table"]}
    for measure in ("oip_shift", "oip_shift_unsigned", "oip_xact"):  # Both new measures, with ceiling and floor.
        assert {measure, f"{measure}_ceiling", f"{measure}_floor"} <= metrics
    oip = res["oip"]["seed_0 vs seed_1"]
    assert len(oip["shift"]) == len(oip["xact_ab"]) == len(oip["maps_a"]) == 3  # Every matched map.
    assert (out / "oip_measures_Conv2D_3.png").stat().st_size > 0
    assert "| map a | map b | live starts a, b |" in report and "shift r" in report
    assert sorted(p.name for p in models_out.iterdir()) == ["seed_0", "seed_1"]
    assert res["models"][1]["seed"] == 1 and 0 < res["models"][1]["test_accuracy"] <= 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "1"], "at least two seeds"),
        (["--layers", "Conv2D_9"], "valid names: Conv2D_1"),
        (["--layers", "Max_Pool_1", "--oip-layer", "none"], "unknown conv layer"),
        (["--layers", "Conv2D_1"], "not among the compared layers"),
        (["--models", "only_one"], "at least two models"),
        pytest.param(["--models", "missing_a", "missing_b"], "no checkpoint", marks=pytest.mark.mnist),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, request):
    if "missing_a" in argv:  # The checkpoints are looked for after the data.
        request.getfixturevalue("mnist")
    assert cli.run(main, argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_different_architectures_are_refused(tmp_path, capsys, seed_models):
    small = ModelConfig(conv=((8, 3, "relu"), (16, 3, "relu"), (16, 3, "relu")))
    other = TrainedModel(model=init_model(small, 0), standardization=seed_models[0].standardization)
    paths = [save_model(tmp_path / "a", seed_models[0]), save_model(tmp_path / "b", other)]
    assert cli.run(main, ["--models", *map(str, paths), "--out", str(tmp_path / "out")]) == 2
    assert "different architectures" in capsys.readouterr().err
    with pytest.raises(JaxoipError, match="at least two models"):
        compare.compare_models(seed_models[:1], None)
