"""Layer grids, comparisons, predictions, confusion matrix, exemplars and the activations command."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxoip import cli
from jaxoip.analysis import activations as act
from jaxoip.analysis import exemplars, grid_comparison, grids, predictions
from jaxoip.cli import activations as act_cmd
from jaxoip.data import inputs
from jaxoip.data.mnist import MNIST
from jaxoip.errors import DataError, JaxoipError, LayerError
from jaxoip.models.cnn import ModelConfig, init_model, layer_output, receptive_field

# --- Grids on hand-made activations -------------------------------------------------------------------------


def test_grid_puts_each_map_in_its_cell():
    h, w, c, per_row = 3, 2, 11, 4
    acts = np.arange(h * w * c, dtype=np.float32).reshape(h, w, c)
    grid = grids.activation_grid(acts, per_row)
    assert grid.shape == (3 * h, per_row * w)
    for m in range(c):
        r, col = divmod(m, per_row)
        np.testing.assert_array_equal(grid[r * h : (r + 1) * h, col * w : (col + 1) * w], acts[..., m])
    assert np.isnan(grid[2 * h :, 3 * w :]).all()  # cell 11 does not exist
    assert not np.isnan(grid[2 * h :, : 3 * w]).any()


def test_dense_grid_has_one_cell_per_node():
    nodes = np.linspace(-1.0, 1.0, 10, dtype=np.float32)
    grid = grids.activation_grid(nodes, per_row=8)
    assert grid.shape == (2, 8)
    np.testing.assert_array_equal(grid[0], nodes[:8])
    np.testing.assert_array_equal(grid[1, :2], nodes[8:])
    assert np.isnan(grid[1, 2:]).all()


def test_standardize_maps_follows_the_study():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(4, 4, 3)).astype(np.float32)
    acts[..., 1] = 5.0  # a constant map
    out = grids.standardize_maps(acts)
    m = acts[..., 0]
    expected = np.clip((m - m.mean()) / m.std() * 64 + 128, 0, 255)
    np.testing.assert_allclose(out[..., 0], expected, rtol=1e-5)
    np.testing.assert_array_equal(out[..., 1], 0.0)
    assert out.min() >= 0 and out.max() <= 255
    spiky = np.zeros((5, 5, 1), np.float32)
    spiky[0, 0, 0] = 100.0  # 4.9 standard deviations above the mean: clipped at 255
    assert grids.standardize_maps(spiky)[0, 0, 0] == 255.0
    dense = grids.standardize_maps(np.array([0.0, 1.0, 2.0, 3.0]))
    np.testing.assert_allclose(dense.mean(), 128.0, rtol=1e-5)  # nodes are scaled together


def test_map_summary_on_hand_made_groups():
    a = np.zeros((2, 2, 2, 4), np.float32)
    b = np.zeros((3, 2, 2, 4), np.float32)
    a[:, 0, 0, 0] = 4.0  # map 0: only group A
    b[:, 1, 1, 2] = 2.0  # map 2: only group B
    a[:, :, :, 1] = 1.0  # map 1: both
    b[:, :, :, 1] = 3.0
    a[0, 0, 0, 3] = 0.2  # map 3: below 10% of the largest activation (4.0): inactive
    s = grid_comparison.map_summary(a, b)
    assert list(s.index) == [0, 1, 2, 3]
    np.testing.assert_allclose(s["mean_a"], [1.0, 1.0, 0.0, 0.025])
    np.testing.assert_allclose(s["mean_b"], [0.0, 3.0, 0.5, 0.0])
    np.testing.assert_allclose(s["difference"], s["mean_a"] - s["mean_b"])
    np.testing.assert_allclose(s["active_a"], [1, 1, 0, 0])
    np.testing.assert_allclose(s["active_b"], [0, 1, 1, 0])
    assert s.index[s["only_a"]].tolist() == [0]
    assert s.index[s["only_b"]].tolist() == [2]
    dense = grid_comparison.map_summary(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 0.5]]))
    assert dense["only_a"].tolist() == [True, False] and dense["only_b"].tolist() == [False, True]
    with pytest.raises(JaxoipError):
        grid_comparison.map_summary(a, b[..., :3])


def test_confusion_matrix_matches_a_count():
    rng = np.random.default_rng(1)
    labels, predicted = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    expected = np.zeros((10, 10), np.int64)
    for t, p in zip(labels, predicted):
        expected[t, p] += 1
    np.testing.assert_array_equal(predictions.confusion_matrix(labels, predicted), expected)
    cm = np.diag([50, 50, 50]) + np.array([[0, 1, 0], [7, 0, 0], [0, 3, 0]])
    top = predictions.most_confused(cm, n=5)
    assert list(zip(top["true"], top["predicted"], top["count"])) == [(1, 0, 7), (2, 1, 3), (0, 1, 1)]
    assert top["pair_count"].tolist() == [8, 3, 8]
    np.testing.assert_allclose(top["share"].iloc[0], 7 / 57)


# --- Image specs and bad input ------------------------------------------------------------------------------


def test_image_specs(mnist):
    img = inputs.get_image("test:19", mnist)
    np.testing.assert_array_equal(img.pixels, mnist.test_images[19])
    assert (img.name, img.label) == ("test:19", int(mnist.test_labels[19]))
    assert inputs.get_image("train:7", mnist).label == int(mnist.train_labels[7])
    for pixels in (mnist.test_images[3][..., 0], mnist.test_images[3], mnist.test_images[3:4]):
        np.testing.assert_array_equal(inputs.get_image(pixels).pixels, mnist.test_images[3])
    assert [i.name for i in inputs.get_images("test:1, train:2", mnist)] == ["test:1", "train:2"]


@pytest.mark.parametrize("spec", ["test19", "val:3", "test:abc", "test:-1", "test:", ":5", ""])
def test_malformed_image_spec(spec, mnist):
    with pytest.raises(JaxoipError, match="SET:INDEX"):
        inputs.get_image(spec, mnist)


def test_bad_images(mnist):
    with pytest.raises(DataError, match=r"out of range.*10000 images"):
        inputs.get_image("test:10000", mnist)
    with pytest.raises(JaxoipError, match="shape"):
        inputs.get_image(np.zeros((27, 28)))
    with pytest.raises(JaxoipError, match="shape"):
        inputs.get_image(np.zeros((2, 28, 28, 1)))
    with pytest.raises(JaxoipError, match="NaN"):
        inputs.get_image(np.full((28, 28), np.nan))
    with pytest.raises(JaxoipError, match="no images"):
        inputs.get_images("", mnist)


# --- With a trained model -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, cell, n_maps, grid_shape",
    [("Conv2D_3", (3, 3), 128, (48, 24)), ("Max_Pool_1", (13, 13), 32, (52, 104)), ("Dense_1", (1, 1), 100, (13, 8))],
)
def test_layer_grid_of_a_real_image(tiny_trained, mnist, layer, cell, n_maps, grid_shape):
    g = grids.layer_grid(tiny_trained, layer, "test:19", mnist)
    expected = np.asarray(tiny_trained.layer_output(mnist.test_images[19:20], layer))[0]
    np.testing.assert_allclose(g.activations, expected, rtol=1e-4, atol=1e-5)
    assert (g.cell_shape, g.n_maps, g.grid.shape) == (cell, n_maps, grid_shape)
    last = n_maps - 1
    np.testing.assert_allclose(g.cell(last), expected[..., last].reshape(cell), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g.probabilities.sum(), 1.0, rtol=1e-5)


def test_standardized_grid_of_an_array(tiny_trained, mnist):
    g = grids.layer_grid(tiny_trained, "Conv2D_3", mnist.test_images[19], per_row=16, standardize=True)
    assert (g.grid.shape, g.image.name, g.image.label) == ((24, 48), "array", None)
    raw = np.asarray(tiny_trained.layer_output(mnist.test_images[19:20], "Conv2D_3"))[0]
    np.testing.assert_allclose(g.activations, raw, rtol=1e-4, atol=1e-5)  # raw values are kept
    np.testing.assert_allclose(g.cell(21), grids.standardize_maps(raw)[..., 21], atol=1e-2)
    assert np.nanmin(g.grid) >= 0 and np.nanmax(g.grid) <= 255
    compiled = grids._layer_and_output._cache_size()
    grids.layer_grid(tiny_trained, "Conv2D_3", "test:20", mnist)  # another image: no new compilation
    assert grids._layer_and_output._cache_size() == compiled


def test_analyses_run_at_the_precision_asked(tiny_trained, mnist):
    """bf16 rounds the matmul inputs: close to highest (bfloat16 keeps ~3 significant digits), not equal."""
    hi = grids.layer_grid(tiny_trained, "Conv2D_3", "test:19", mnist)
    lo = grids.layer_grid(tiny_trained, "Conv2D_3", "test:19", mnist, precision="bf16")
    assert not np.array_equal(hi.activations, lo.activations)
    scale = np.abs(hi.activations).max()
    np.testing.assert_allclose(lo.activations, hi.activations, atol=0.05 * scale)
    p_hi = predictions.predict_split(tiny_trained, mnist, precision="highest").probabilities[:200]
    p_lo = predictions.predict_split(tiny_trained, mnist, precision="bf16").probabilities[:200]
    assert not np.array_equal(p_hi, p_lo)
    np.testing.assert_allclose(p_lo, p_hi, atol=0.05)


def test_bad_layer_and_per_row(tiny_trained, mnist):
    with pytest.raises(LayerError, match="valid names: Conv2D_1"):
        grids.layer_grid(tiny_trained, "Conv2D_9", "test:0", mnist)
    with pytest.raises(JaxoipError, match="at least 1"):
        grids.layer_grid(tiny_trained, "Conv2D_3", "test:0", mnist, per_row=0)
    with pytest.raises(LayerError, match="map layer"):
        exemplars.find_exemplars(tiny_trained, mnist, "Dense_1")


def test_compare_fours_and_nines(tiny_trained, mnist):
    fours = [int(i) for i in np.flatnonzero(mnist.test_labels == 4)[:3]]
    nines = [int(i) for i in np.flatnonzero(mnist.test_labels == 9)[:2]]
    c = grid_comparison.compare_images(
        tiny_trained,
        "Conv2D_3",
        ",".join(f"test:{i}" for i in fours),
        [f"test:{i}" for i in nines],
        mnist,
        ("4s", "9s"),
    )
    assert (len(c.grids_a), len(c.grids_b), c.names) == (3, 2, ("4s", "9s"))
    assert [g.image.label for g in c.grids_a + c.grids_b] == [4, 4, 4, 9, 9]
    for g in c.grids_a + c.grids_b:
        assert c.vmin <= np.nanmin(g.grid) and np.nanmax(g.grid) <= c.vmax
    acts_a = np.asarray(tiny_trained.layer_output(mnist.test_images[fours], "Conv2D_3"))
    acts_b = np.asarray(tiny_trained.layer_output(mnist.test_images[nines], "Conv2D_3"))
    np.testing.assert_allclose(c.summary["mean_a"], acts_a.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c.summary["mean_b"], acts_b.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        c.difference_grid, grids.activation_grid(acts_a.mean(0) - acts_b.mean(0)), rtol=1e-3, atol=1e-4
    )
    assert len(c.summary) == 128


def test_predictions_of_the_test_set(tiny_trained, mnist):
    pred = predictions.predict_split(tiny_trained, mnist)
    assert pred.probabilities.shape == (10000, 10)
    np.testing.assert_allclose(pred.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(pred.accuracy, tiny_trained.metrics["test_accuracy"], atol=1e-3)
    direct = np.asarray(tiny_trained.layer_output(mnist.test_images[:50], "Dense_2"))
    np.testing.assert_allclose(pred.probabilities[:50], direct, rtol=1e-4, atol=1e-6)
    wrong = predictions.misclassified(pred)
    assert len(wrong) == int((pred.predicted != pred.labels).sum()) > 0
    assert (wrong["label"] != wrong["predicted"]).all()
    assert wrong["p_predicted"].is_monotonic_decreasing
    unsure = predictions.least_confident(pred, 20)
    assert unsure["p_predicted"].is_monotonic_increasing and len(unsure) == 20
    assert unsure["p_predicted"].iloc[-1] <= np.sort(pred.confidence)[20]
    np.testing.assert_array_equal(pred.confusion(), predictions.confusion_matrix(pred.labels, pred.predicted))
    assert pred.confusion().sum() == 10000


def test_whole_test_set_in_one_pass(tiny_trained, mnist):
    acts = act.dataset_activations(tiny_trained, mnist, "Conv2D_3")
    assert acts.shape == (10000, 3, 3, 128)
    some = [0, 4321, 9999]
    direct = np.asarray(tiny_trained.layer_output(mnist.test_images[some], "Conv2D_3"))
    np.testing.assert_allclose(np.asarray(acts)[some], direct, rtol=1e-4, atol=1e-5)
    small = _subset(mnist, 700)
    means = act.dataset_activations(tiny_trained, small, "Conv2D_1", fn=lambda a: a.mean(axis=(1, 2)), batch_size=300)
    assert means.shape == (700, 32)
    direct = np.asarray(tiny_trained.layer_output(small.test_images[-2:], "Conv2D_1")).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(means)[-2:], direct, rtol=1e-4, atol=1e-5)


# --- Exemplars and receptive fields -------------------------------------------------------------------------


def _subset(mnist, n):
    return MNIST(mnist.train_images[:1], mnist.train_labels[:1], mnist.test_images[:n], mnist.test_labels[:n], "subset")


def test_exemplars_agree_with_brute_force(tiny_trained, mnist):
    data, k = _subset(mnist, 150), 4
    ex = exemplars.find_exemplars(tiny_trained, data, "Conv2D_3", k=k)
    acts = np.asarray(tiny_trained.layer_output(data.test_images, "Conv2D_3"))
    for m in range(0, 128, 7):
        best = np.array([acts[i, :, :, m].max() for i in range(len(acts))])
        expected = np.sort(best)[::-1][:k]
        np.testing.assert_allclose(ex.values[m], expected, rtol=1e-4, atol=1e-5)
        live = np.flatnonzero(expected > 0)  # Only activating images are exemplars.
        assert (ex.image_indices[m, len(live) :] == -1).all() and len(ex.patches[m]) == len(live)
        for n in live:
            i, (r, c) = ex.image_indices[m, n], ex.nodes[m, n]
            np.testing.assert_allclose(best[i], ex.values[m, n], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(acts[i, r, c, m], ex.values[m, n], rtol=1e-4, atol=1e-5)
            # Conv2D_3 node (r, c) sees input rows 4r..4r+17 and columns 4c..4c+17.
            np.testing.assert_array_equal(
                ex.patches[m][n], data.test_images[i, 4 * r : 4 * r + 18, 4 * c : 4 * c + 18, 0]
            )
    assert [p.shape for p in ex.patches[:2]] == [(k, 18, 18)] * 2


@pytest.mark.parametrize(
    "layer, size, stride",
    [("Conv2D_1", 3, 1), ("Max_Pool_1", 4, 2), ("Conv2D_2", 8, 2), ("Max_Pool_2", 10, 4), ("Conv2D_3", 18, 4)],
)
def test_receptive_field_is_the_set_of_pixels_a_node_sees(layer, size, stride):
    config = ModelConfig()
    h = {"Conv2D_1": 26, "Max_Pool_1": 13, "Conv2D_2": 11, "Max_Pool_2": 5, "Conv2D_3": 3}[layer]
    for i, j in [(0, 0), (1, h - 1), (h - 1, h - 1)]:
        r0, r1, c0, c1 = receptive_field(config, layer, i, j)
        assert (r0, r1, c0, c1) == (stride * i, stride * i + size, stride * j, stride * j + size)
        assert 0 <= r0 < r1 <= 28 and 0 <= c0 < c1 <= 28  # inside the image: valid convolutions never cross it
    # The pixels whose gradient reaches node (i, j) of a random network, over random images, are its field.
    model = init_model(config, 0)
    graphdef, params = nnx.split(model)
    i, j = h // 2, h - 1

    def node(x):
        out = layer_output(graphdef, params, x[None], layer, pre_activation=layer.startswith("Conv"))
        return out[0, i, j].sum()

    images = jax.random.normal(jax.random.key(3), (16, 28, 28, 1))
    seen = np.asarray(jnp.abs(jax.vmap(jax.grad(node))(images)).max(axis=(0, 3)) > 0)
    r0, r1, c0, c1 = receptive_field(config, layer, i, j)
    field = np.zeros((28, 28), bool)
    field[r0:r1, c0:c1] = True
    np.testing.assert_array_equal(seen, field)
    with pytest.raises(LayerError, match="outside"):
        receptive_field(config, layer, h, 0)


# --- The command --------------------------------------------------------------------------------------------


def _write_idx(path, array):
    array = np.asarray(array, np.uint8)
    header = (2051 if array.ndim == 3 else 2049).to_bytes(4, "big")
    path.write_bytes(header + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes())


@pytest.fixture(scope="module")
def small_data_dir(mnist, tmp_path_factory):
    """The first 400 test images as IDX files: the command's test-set passes stay quick."""
    folder = tmp_path_factory.mktemp("small_mnist")
    _write_idx(folder / "train-images-idx3-ubyte", mnist.train_images[:100, ..., 0])
    _write_idx(folder / "train-labels-idx1-ubyte", mnist.train_labels[:100])
    _write_idx(folder / "t10k-images-idx3-ubyte", mnist.test_images[:400, ..., 0])
    _write_idx(folder / "t10k-labels-idx1-ubyte", mnist.test_labels[:400])
    return folder


def test_command_writes_its_figures(tiny_checkpoint, small_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "--model",
        str(tiny_checkpoint),
        "--data-dir",
        str(small_data_dir),
        "--out",
        str(out),
        "--layer",
        "Conv2D_3",
    ]
    rc = cli.run(
        act_cmd.main,
        argv
        + ["--image", "test:19", "--cmap", "magma", "--standardize", "--compare", "test:4,test:6", "--versus", "test:7"]
        + ["--confusion", "--misclassified", "6", "--uncertain", "3", "--exemplars", "2"],
    )
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "test:19 (label 4): predicted" in printed.out and "test accuracy" in printed.out
    names = ["Conv2D_3_test19.png", "compare_Conv2D_3.png", "confusion.png", "misclassified.png", "uncertain.png"]
    for name in names + ["exemplars_Conv2D_3.png"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (out / "compare_Conv2D_3.csv").read_text().startswith("map,mean_a,mean_b,difference")
    assert {p.name for p in out.glob(".*")} == {".jaxoip.json", ".jaxoip.lock"}  # no temporary files left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "test:10000"], "out of range"),
        (["--image", "test19"], "SET:INDEX"),
        (["--layer", "Conv9", "--image", "test:1"], "unknown layer 'Conv9'"),
        (["--compare", "test:1"], "--versus"),
        (["--image", "test:1", "--cmap", "nocmap"], "unknown colormap"),
        ([], "nothing to do"),
    ],
)
def test_command_bad_input_is_one_line(tiny_checkpoint, tmp_path, capsys, args, message):
    rc = cli.run(act_cmd.main, ["--model", str(tiny_checkpoint), "--out", str(tmp_path)] + args)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_module_runs_and_fails_cleanly(tiny_checkpoint, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxoip",
            "activations",
            "--model",
            str(tiny_checkpoint),
            "--image",
            "test:10000",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "out of range" in proc.stderr


def test_top_k_is_the_head_of_a_stable_descending_sort():
    """The exemplars' choice: the k largest per map, ties to the lower image index, as a full stable sort gives."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        n, c = int(rng.integers(1, 50)), int(rng.integers(1, 4))
        k = int(rng.integers(1, n + 1))
        v = rng.integers(-2, 3, size=(c, n)).astype(np.float32) if trial % 2 else rng.normal(size=(c, n))
        expected = np.argsort(-v, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(exemplars.top_k(v, k), expected)
