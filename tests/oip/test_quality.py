"""Issue 16 item 1: the per-map measures on a planted model with known answers, against a NumPy forward pass."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxoip
from jaxoip.data.mnist import Standardization
from jaxoip.errors import JaxoipError
from jaxoip.models.cnn import ModelConfig, TrainedModel, init_model
from jaxoip.oip import quality, two_choice
from jaxoip.oip.config import OIPConfig

# Dense_1 (ReLU) nodes of a flattened standardized image match a ring, a vertical bar and K fixed pixel-noise
# patterns with either sign. Dense_2 (ReLU): RING and BAR pass their node on; NOISE is the mean of the 2K
# noise nodes (sum of |projection|): its OIP mixes noise patterns with signs of its own, unrelated to the
# signs with which the digits that drive it match them.
K_NOISE = 16
QUALITY_CONFIG = ModelConfig(conv=(), pool=(), dense=((2 + 2 * K_NOISE, "relu"), (3, "relu"), (10, "softmax")))
RING, NOISE, BAR = 0, 1, 2
STD = Standardization(33.3, 78.6)


def _weights() -> tuple[np.ndarray, np.ndarray]:
    """(784, 2 + 2K) unit-norm, zero-mean templates (ring, bar, +-noise) and the (2 + 2K, 3) second layer."""
    yy, xx = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    ring = np.exp(-((np.hypot(yy - 13.5, xx - 13.5) - 7.0) ** 2) / 4.0)
    bar = np.exp(-((xx - 13.5) ** 2) / 3.0) * (np.abs(yy - 13.5) < 10)
    noise = list(np.random.default_rng(7).normal(size=(K_NOISE, 28, 28)))
    unit = lambda t: (t - t.mean()) / np.linalg.norm(t - t.mean())  # noqa: E731
    noise = [unit(t) for t in noise]
    w1 = np.stack([unit(ring), unit(bar), *noise, *[-t for t in noise]], axis=-1).reshape(784, 2 + 2 * K_NOISE)
    w2 = np.zeros((2 + 2 * K_NOISE, 3))
    w2[0, RING], w2[1, BAR], w2[2:, NOISE] = 1.0, 1.0, 1.0 / K_NOISE
    return w1, w2


def planted_quality_model() -> TrainedModel:
    w1, w2 = _weights()
    model = init_model(QUALITY_CONFIG, 0)
    state = nnx.state(model, nnx.Param)
    state["Dense_1"]["kernel"][...] = jnp.asarray(w1, jnp.float32)
    state["Dense_1"]["bias"][...] = jnp.zeros((2 + 2 * K_NOISE,))
    state["Dense_2"]["kernel"][...] = jnp.asarray(w2, jnp.float32)
    state["Dense_2"]["bias"][...] = jnp.zeros((3,))
    nnx.update(model, state)
    return TrainedModel(model=model, standardization=STD)


def numpy_forward(x: np.ndarray) -> np.ndarray:
    """(N, 3) Dense_2 of the planted model for standardized images (N, 28, 28, 1), NumPy only."""
    w1, w2 = _weights()
    return np.maximum(np.maximum(x.reshape(len(x), -1).astype(np.float64) @ w1, 0) @ w2, 0)


@pytest.fixture(scope="module")
def small_mnist(mnist):
    return dataclasses.replace(mnist, test_images=mnist.test_images[:2000], test_labels=mnist.test_labels[:2000])


@pytest.fixture(scope="module")
def planted_scan(small_mnist):
    kw = dict(restarts=4, precursor_starts=8, screen=2, seed=3, data=small_mnist, progress=False)
    cfg = OIPConfig(steps=100, epsilon=0.05)
    return jaxoip.scan_maps(planted_quality_model(), "Dense_2", config=cfg, **kw), kw, cfg


def test_planted_answers(planted_scan):
    """The ring map's OIP is selective and explains it; the noise map's OIP explains nothing."""
    scan, _, _ = planted_scan
    t = scan.table().set_index("map")
    print(t[["superstimulus", "selectivity_rank", "selectivity_ratio", "stability", *two_choice.TWO_CHOICE]].T)
    assert t.loc[RING, "selectivity_rank"] == 0 and t.loc[RING, "selectivity_ratio"] > 1
    assert t.loc[RING, "two_choice_oip"] >= 0.95
    assert abs(t.loc[NOISE, "two_choice_oip"] - 0.5) <= 0.2


def test_superstimulus_and_selectivity_match_numpy(planted_scan, small_mnist):
    scan, _, _ = planted_scan
    t = scan.table()
    on_oip = numpy_forward(scan.best_images)  # (m, 3): every map on every map's best OIP
    # superstimulus: on the OIP clipped to pixels [0, 255]; superstimulus_raw: on the OIP as searched.
    on_clipped = numpy_forward(STD(np.clip(STD.to_pixels(scan.best_images.astype(np.float64)), 0, 255)))
    pixels = STD.to_pixels(scan.best_images.astype(np.float64)).reshape(3, -1)
    np.testing.assert_allclose(t["out_of_range_frac"], ((pixels < -0.5) | (pixels > 255.5)).mean(axis=1))
    assert (t["out_of_range_frac"] > 0).all()  # The unconstrained search leaves the range.
    data_max = numpy_forward(STD(small_mnist.test_images)).max(axis=0)
    for i, m in enumerate(scan.map_indices):
        norm = on_oip[i] / data_max
        np.testing.assert_allclose(t["superstimulus_raw"][i], norm[m], rtol=1e-4)
        np.testing.assert_allclose(t["superstimulus"][i], on_clipped[i, m] / data_max[m], rtol=1e-4)
        others = np.delete(norm, m)
        assert t["selectivity_rank"][i] == int((others > norm[m]).sum())
        with np.errstate(divide="ignore"):  # No other map responds: inf.
            np.testing.assert_allclose(t["selectivity_ratio"][i], norm[m] / others.max(), rtol=1e-4)


def test_measures_in_range_and_reproducible(planted_scan):
    scan, kw, cfg = planted_scan
    t = scan.table()
    assert (t["superstimulus"] > 0).all() and (t["selectivity_ratio"] > 0).all()
    assert t["selectivity_rank"].between(0, 2).all()
    assert t["stability"].between(-1, 1).all()
    for col in two_choice.TWO_CHOICE:
        assert t[col].between(0, 1).all(), col
        assert (t[f"{col}_lo"] <= t[col]).all() and (t[col] <= t[f"{col}_hi"]).all(), col
        assert (t[f"{col}_hi"] - t[f"{col}_lo"]).between(0.05, 0.5).all(), col  # 20 trials: wide, not empty
    s = scan.summary().to_dict()["quality"]["two_choice"]
    assert s["chance"] == 0.5
    # 2000 test images: 1000 queries, pools of 20; 4 restarts: 4 references per arm, 4 minimizing ones.
    assert (s["pairs_per_map"], s["references_per_arm"], s["min_references_per_arm"]) == (20, 4, 4)
    for k in ("two_choice_oip", "two_choice_exemplars", *(f"controls.{c}" for c in ("noise", "random_digits"))):
        v = s["controls"][k.split(".")[1]] if "." in k else s[k]
        lo, hi = v["ci95"]
        assert 0 <= lo <= v["mean"] <= hi <= 1
    assert abs(s["controls"]["noise"]["mean"] - 0.5) < 0.25  # Noise references tell nothing about a map.
    assert scan.quality.min_images.shape == (3, 4, 28, 28, 1) and scan.quality.min_objective.shape == (3, 4)
    again = jaxoip.scan_maps(planted_quality_model(), "Dense_2", config=cfg, **kw)
    cols = ["superstimulus", "selectivity_rank", "selectivity_ratio", "stability", *two_choice.TWO_CHOICE]
    assert again.table()[cols].equals(t[cols])
    assert again.summary().to_dict()["quality"] == scan.summary().to_dict()["quality"]


def test_undefined_measures_stay_empty():
    """A map dead on data gets no superstimulus or selectivity; a tie at the top counts half in two-choice."""
    on_oip = np.array([[2.0, 1.0], [0.0, 3.0]])
    data_max = np.array([1.0, 0.0])
    assert np.isnan(quality.superstimulus(on_oip[[0, 1], [0, 1]], data_max)[1])
    rank, ratio = quality.selectivity(on_oip, np.array([0, 1]), data_max)
    assert rank[0] == 0 and ratio[0] == np.inf and np.isnan(rank[1]) and np.isnan(ratio[1])
    sim = np.array([[[0.9], [0.1], [0.5], [0.1]]])  # strong queries 0.9, 0.1; weak 0.5, 0.1
    assert two_choice.trial_correct(sim, slice(0, 1)).mean(axis=1)[0] == 0.75


def test_quality_config_checked():
    with pytest.raises(JaxoipError, match="query fraction"):
        two_choice.QualityConfig(query_frac=0.7)
    with pytest.raises(JaxoipError, match="pairs"):
        two_choice.QualityConfig(pairs=0)


def test_map_alone_equals_map_in_scan(small_mnist):
    """A map's every measure is the same scanned alone as beside other maps (its own random stream)."""
    kw = dict(restarts=4, precursor_starts=8, screen=2, seed=5, data=small_mnist, progress=False, chunk_size=4)
    cfg = OIPConfig(steps=30, epsilon=0.05)
    full = jaxoip.scan_maps(planted_quality_model(), "Dense_2", [0, 1, 2], config=cfg, **kw)
    alone = jaxoip.scan_maps(planted_quality_model(), "Dense_2", [BAR], config=cfg, **kw)
    np.testing.assert_array_equal(alone.best_images[0], full.best_images[BAR])
    cols = list(alone.quality.columns())
    assert {"out_of_range_frac", "superstimulus_raw", "two_choice_oip_lo", "two_choice_exemplars_minmax_hi"} <= set(
        cols
    )
    a, f = alone.table()[cols].iloc[0], full.table()[cols].iloc[BAR]
    assert a.equals(f), (a, f)
    for k in ("strong", "weak", "exemplar_refs", "correct_oip", "correct_exemplars_minmax"):
        np.testing.assert_array_equal(alone.quality.trials[k][0], full.quality.trials[k][BAR])


def test_map_alone_equals_map_in_scan_on_a_conv_layer(reference, small_mnist, tiny_checkpoint):
    """On the reference model's Conv2D_3 at equal chunk size, a map's OIPs and every measure of it (the
    superstimulus on the clipped OIP and the feature observer's arms included) are the same bits scanned
    alone as beside 15 other maps: the network's values on a map's own images come from batches whose size
    does not depend on the scan's map count."""
    q = two_choice.QualityConfig(observer_model=tiny_checkpoint, references=4, min_starts=2)
    kw = dict(restarts=4, precursor_starts=8, screen=2, seed=0, data=small_mnist, progress=False, chunk_size=4)
    cfg = OIPConfig(steps=10)
    full = jaxoip.scan_maps(reference, "Conv2D_3", range(16), config=cfg, quality=q, **kw)
    alone = jaxoip.scan_maps(reference, "Conv2D_3", [3], config=cfg, quality=q, **kw)
    np.testing.assert_array_equal(alone.best_images[0], full.best_images[3])
    cols = list(alone.quality.columns())
    assert {"superstimulus", "two_choice_oip_features", "two_choice_exemplars_minmax_features"} <= set(cols)
    a, f = alone.table()[cols].iloc[0], full.table()[cols].iloc[3]
    assert a.equals(f), (a, f)


def test_wilson_interval_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 20), (7, 20), (20, 20), (63, 100), (99, 100)):
        lo, hi = two_choice.wilson_interval(np.array([k / n]), n)
        ci = scipy_stats.binomtest(k, n).proportion_ci(method="wilson")
        np.testing.assert_allclose([lo[0], hi[0]], [ci.low, ci.high], atol=1e-12)
    assert np.isnan(two_choice.wilson_interval(np.array([np.nan]), 10)[0][0])


def _numpy_shift_similarity(a: np.ndarray, b: np.ndarray, s: int) -> float:
    """Largest Pearson correlation over the overlaps of images a and b (H, W) shifted by up to s pixels."""
    h, w = a.shape
    best = -np.inf
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            x = a[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)].ravel().astype(np.float64)
            y = b[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)].ravel().astype(np.float64)
            x, y = x - x.mean(), y - y.mean()
            best = max(best, float(x @ y / np.sqrt((x @ x) * (y @ y) + 1e-30)))
    return best


def test_layer_mean_recomputed_from_two_choice_npz(planted_scan, small_mnist, tmp_path):
    """The saved trials rerun with plain NumPy give the published layer means of both max arms."""
    import json

    scan, _, _ = planted_scan
    out = jaxoip.write_scan(scan, tmp_path / "scan")
    summary = json.loads((out / "summary.json").read_text())["quality"]["two_choice"]
    with np.load(out / "oips.npz") as z:
        assert z["min_images"].shape == (3, 4, 28, 28, 1) and z["min_objective"].shape == (3, 4)
    z = dict(np.load(out / "two_choice.npz"))
    test_x = STD(small_mnist.test_images.astype(np.float64))[..., 0]
    s = int(z["max_shift"])
    for arm, refs in (("oip", z["oip_refs"][..., 0]), ("exemplars", test_x[z["exemplar_refs"]])):
        accuracies = []
        for i in range(len(z["map_indices"])):
            if not (z["valid"][i] and (z["has_oip"][i] or arm != "oip")):
                continue

            def score(query, i=i, refs=refs):
                return max(_numpy_shift_similarity(test_x[query], r, s) for r in refs[i])

            strong = np.array([score(q) for q in z["strong"][i]])
            weak = np.array([score(q) for q in z["weak"][i]])
            correct = np.where(strong > weak, 1.0, np.where(strong == weak, 0.5, 0.0))
            np.testing.assert_array_equal(correct, z[f"correct_{arm}"][i])
            accuracies.append(correct.mean())
        assert round(float(np.mean(accuracies)), 4) == summary[f"two_choice_{arm}"]["mean"], arm


def test_second_observer_in_feature_space(small_mnist, tiny_checkpoint):
    """An independently trained CNN's features judge the same trials; its columns sit beside the pixel ones."""
    kw = dict(restarts=2, precursor_starts=8, screen=2, seed=3, data=small_mnist, progress=False)
    q = two_choice.QualityConfig(observer_model=tiny_checkpoint, min_starts=0)
    scan = jaxoip.scan_maps(
        planted_quality_model(), "Dense_2", config=OIPConfig(steps=30, epsilon=0.05), quality=q, **kw
    )
    t = scan.table()
    for col in ("two_choice_oip", "two_choice_exemplars"):
        for obs in ("", "_features"):
            assert t[f"{col}{obs}"].between(0, 1).all() and (t[f"{col}{obs}_lo"] <= t[f"{col}{obs}"]).all()
    assert t.loc[RING, "two_choice_exemplars_features"] >= 0.9  # Ring-like digits share features with ring digits.
    s = scan.summary().to_dict()["quality"]["two_choice"]
    assert s["observers"] == ["pixels", "features"] and "noise_features" in s["controls"]
    assert "oip_minus_exemplars_features" in s and "two_choice_oip_minmax" not in s
    assert set(s["observer_agreement"]) == {"max", "arms_apart"}  # No minimizing references: no minmax variant.
    with pytest.raises(JaxoipError, match="no layer 'Dense_9'"):
        two_choice.feature_observer(dataclasses.replace(q, observer_layer="Dense_9"), STD)


def test_observer_agreement_marks_disagreement():
    """The observers disagree where one finds OIPs better and the other exemplars, or the means' order flips;
    arms whose CIs under the two observers do not overlap are named."""

    def ci(mean, lo, hi):
        return {"mean": mean, "ci95": [lo, hi], "maps": 10}

    tc = {
        "oip_minus_exemplars": ci(0.02, 0.01, 0.03),  # pixels: OIPs better
        "oip_minus_exemplars_features": ci(-0.05, -0.08, -0.02),  # features: exemplars better
        "oip_minus_exemplars_minmax": ci(0.01, -0.01, 0.02),  # both hold 0, but the means' order flips
        "oip_minus_exemplars_minmax_features": ci(-0.01, -0.03, 0.01),
        "two_choice_oip": ci(0.96, 0.95, 0.97),
        "two_choice_oip_features": ci(0.90, 0.88, 0.92),
        "two_choice_exemplars": ci(0.94, 0.93, 0.95),
        "two_choice_exemplars_features": ci(0.95, 0.94, 0.96),
    }
    a = two_choice.observer_agreement(tc)
    assert a["max"] == {"pixels": "oip", "features": "exemplars", "verdicts_differ": True, "ordering_flips": True}
    assert a["minmax"] == {
        "pixels": "neither",
        "features": "neither",
        "verdicts_differ": False,
        "ordering_flips": True,
    }
    assert a["arms_apart"] == ["two_choice_oip"]
    same = {k: v for k, v in tc.items() if not k.endswith("_features")}
    same.update({f"{k}_features": v for k, v in same.items()})
    agree = two_choice.observer_agreement(same)
    assert not agree["max"]["verdicts_differ"] and not agree["minmax"]["ordering_flips"] and not agree["arms_apart"]
