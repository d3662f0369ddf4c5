"""What a fault campaign still found (issue 27): NaN weights and images through every evaluation, labels and
pixels that do not fit, invalid Keras settings, damaged Keras files, misbehaving factories. Data-free."""

import json
import pickle
import re
import struct
import zipfile
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxoip
from jaxoip import cli
from jaxoip.analysis.activations import class_probabilities, image_activations
from jaxoip.cli import activations as activations_cmd
from jaxoip.errors import CheckpointError, DataError, DivergenceError, JaxoipError, OutOfMemoryError
from jaxoip.models.keras import parse_config, read_keras_file
from jaxoip.oip.search import OIPConfig, search_oips


class TinyNet(nnx.Module):
    def __init__(self, nan_kernel: bool = False, nan_output: bool = False):
        self.stem = nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0))
        self.head = nnx.Linear(4, 10, rngs=nnx.Rngs(1))
        self.nan_output = nan_output
        if nan_kernel:
            self.stem.kernel[...] = jnp.full_like(self.stem.kernel[...], jnp.nan)

    def __call__(self, x):
        x = self.head(nnx.relu(self.stem(x)).mean(axis=(1, 2)))
        return jnp.log(x * 0.0 - 1.0) if self.nan_output else x  # log(-1): NaN whatever the input.


class Noisy(TinyNet):
    def __init__(self):
        super().__init__()
        self.rngs = nnx.Rngs(noise=3)

    def __call__(self, x):
        return super().__call__(x + 0.1 * jax_normal(self.rngs.noise(), x.shape))


def jax_normal(key, shape):
    import jax

    return jax.random.normal(key, shape)


def _npz(path, n=20, labels=None):
    x = np.random.default_rng(0).integers(0, 256, (n, 28, 28), np.uint8)
    y = np.arange(n) % 10 if labels is None else labels
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return path


def test_nan_weights_of_an_nnx_module_are_refused_by_every_evaluation(tmp_path, capsys):
    # XLA's compiled max(NaN, 0) may give 0: the outputs alone looked finite (every image "class 0").
    trained = jaxoip.from_nnx(TinyNet(nan_kernel=True), (28, 28, 1), jaxoip.Standardization(33.3, 78.6))
    pixels = np.full((3, 28, 28, 1), 100.0, np.float32)
    graphdef, params = trained.split()
    for call in (
        lambda: trained.layer_output(pixels, "head"),
        lambda: jaxoip.layer_output(graphdef, params, pixels, "head"),
        lambda: class_probabilities(trained, pixels),
        lambda: image_activations(trained, pixels, "head"),
        lambda: jaxoip.predict_split(trained, jaxoip.load_images(_npz(tmp_path / "d.npz"))),
    ):
        with pytest.raises(DivergenceError, match=r"NaN or infinite weights \(net.stem.kernel\)"):
            call()
    (tmp_path / "f.py").write_text(
        "import jaxoip\nfrom test_fault_edges import TinyNet\n"
        "def factory():\n    return jaxoip.from_nnx(TinyNet(nan_kernel=True), (28, 28, 1))\n"
    )
    argv = ["--model", f"{tmp_path / 'f.py'}:factory", "--layer", "stem", "--confusion"]
    argv += ["--data", str(tmp_path / "d.npz")]
    assert cli.run(activations_cmd.main, [*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "NaN or infinite weights" in err and not (tmp_path / "o").exists()


def test_a_module_computing_nan_is_named_not_the_step_size_or_overflow():
    trained = jaxoip.from_nnx(TinyNet(nan_output=True), (28, 28, 1))
    with pytest.raises(DivergenceError, match="the model computes NaN or infinity from finite images and finite"):
        class_probabilities(trained, np.zeros((2, 28, 28, 1), np.float32))
    x0 = np.zeros((2, 28, 28, 1), np.float32)
    with pytest.raises(DivergenceError, match="the model computes NaN or infinity at the start images") as e:
        search_oips(trained.model, trained.config.layers[-1].name, np.zeros(2, np.int32), x0, OIPConfig(steps=3))
    assert "epsilon" not in str(e.value)


def test_layer_output_refuses_non_finite_images():
    trained = jaxoip.from_nnx(TinyNet(), (28, 28, 1))
    graphdef, params = trained.split()
    nan = np.full((1, 28, 28, 1), np.nan, np.float32)
    with pytest.raises(DataError, match="NaN or infinite pixels"):
        jaxoip.layer_output(graphdef, params, nan, "stem")
    with pytest.raises(DataError, match="NaN or infinite pixels"):
        trained.layer_output(nan, "stem")


def test_labels_beyond_int32_are_refused_not_wrapped(tmp_path):
    with pytest.raises(DataError, match=f"hold {2**32 + 1}, beyond the int32 class indices"):
        jaxoip.load_images(_npz(tmp_path / "big.npz", 4, np.array([0, 1, 2**32 + 1, 3], np.int64)))
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2**40 if name == "test_batch" else 0]}
        (cifar / name).write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=f"test labels hold {2**40}"):
        jaxoip.load_images(cifar)


def _png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (6, 8, 8)).astype(np.uint16)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            _png(tmp_path / c / f"{i}.png", wide[i])
    data = jaxoip.load_images(tmp_path, holdout=3)
    assert data.class_names == ("a", "b") and data.class_name(1) == "b"  # The folders' names are kept.
    pixels = np.concatenate([data.train_images, data.test_images])
    expected = np.concatenate([wide[[0, 1, 3, 4]]] * 2 + [wide[[2, 5]]] * 2) / 257.0
    np.testing.assert_allclose(pixels[..., 0], expected, rtol=1e-6)
    assert abs(pixels.mean() - wide.mean() / 257.0) < 1e-3  # Not about 254.5, as the clipped pixels were.


def test_a_decompression_bomb_png_is_one_line(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            _png(tmp_path / c / f"{i}.png", np.zeros((4, 4), np.uint8))
    raw = bytearray((tmp_path / "a" / "0.png").read_bytes())
    raw[16:24] = struct.pack(">II", 20000, 20000)  # The IHDR's width and height, then its CRC.
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    (tmp_path / "a" / "0.png").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"0.png: not a readable image \(DecompressionBombError"):
        jaxoip.load_images(tmp_path, holdout=3)


def _conv(**config):
    return {"class_name": "Conv2D", "config": {"name": "c", "kernel_size": [3, 3], "filters": 4, **config}}


@pytest.mark.parametrize(
    "layer, message",
    [
        (_conv(strides=[0, 0]), r"layer 'c' \(Conv2D\): stride must be a positive integer, got 0"),
        (_conv(filters=4.7), r"filters must be a positive integer, got 4.7"),
        (_conv(filters=0), r"filters must be a positive integer, got 0"),
        (_conv(kernel_size=[-1, -1]), r"kernel must be a positive integer, got -1"),
    ],
)
def test_invalid_keras_settings_are_refused_as_keras_refuses_them(layer, message):
    layers = [layer, {"class_name": "Flatten", "config": {"name": "f"}}]
    with pytest.raises(CheckpointError, match=message) as e:
        parse_config({"class_name": "Sequential", "config": {"layers": layers}}, "m.keras")
    assert str(e.value).count("m.keras") == 1 and str(e.value).count("'c'") == 1


def test_keras_errors_name_the_file_and_layer_once():
    layers = [{"class_name": "Dropout", "config": {"name": "d", "rate": 1.5}}]
    with pytest.raises(CheckpointError) as e:
        parse_config({"class_name": "Sequential", "config": {"layers": layers}}, "m.keras")
    assert str(e.value).count("m.keras") == 1 and str(e.value).count("'d'") == 1, e.value


def _keras_zip(path, weights, units=2):
    import h5py

    layers = [
        {"class_name": "Flatten", "config": {"name": "flatten", "batch_shape": [None, 2, 2, 1]}},
        {"class_name": "Dense", "config": {"name": "dense", "units": units, "activation": "linear"}},
    ]
    config = {"class_name": "Sequential", "config": {"layers": layers}}
    h5 = path.with_suffix(".h5tmp")
    with h5py.File(h5, "w") as f:
        v = f.create_group("layers/dense/vars")
        for i, w in enumerate(weights):
            v.create_dataset(str(i), data=w)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.write(h5, "model.weights.h5")
    return path


def test_damaged_keras_weights_are_one_line(tmp_path):
    import h5py

    good = _keras_zip(tmp_path / "good.keras", [np.ones((4, 2), np.float32), np.zeros(2, np.float32)])
    assert read_keras_file(good).params["dense"]["kernel"].shape == (4, 2)  # The writer is right.
    strings = _keras_zip(tmp_path / "s.keras", [np.array([b"ab", b"cd"]), np.zeros(2, np.float32)])
    with pytest.raises(CheckpointError, match=r"s.keras: layer 'dense': its weights are not numbers"):
        read_keras_file(strings)
    with h5py.File(tmp_path / "scalar.h5", "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": []}})
        f.create_group("model_weights/dense").attrs["weight_names"] = b"dense/kernel:0"
    with pytest.raises(CheckpointError, match=r"scalar.h5 is not a readable Keras HDF5 model"):
        read_keras_file(tmp_path / "scalar.h5")


def test_a_factory_calling_sys_exit_is_one_line_and_a_failure(tmp_path, capsys):
    (tmp_path / "quit.py").write_text("import sys\ndef factory():\n    sys.exit(0)\n")
    spec = f"{tmp_path / 'quit.py'}:factory"
    with pytest.raises(CheckpointError, match=r"factory\(\) called sys.exit\(0\) instead of returning"):
        jaxoip.load_model(spec)
    assert cli.run(activations_cmd.main, ["--model", spec, "--confusion", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sys.exit(0)" in err


def test_from_nnx_refuses_an_unusable_standardization_and_random_draws():
    with pytest.raises(CheckpointError, match=r"from_nnx has an unusable standardization \(mean 0.0, std 0.0\)"):
        jaxoip.from_nnx(TinyNet(), (28, 28, 1), jaxoip.Standardization(0.0, 0.0))
    with pytest.raises(JaxoipError, match=r"draws random numbers from nnx.Rngs when called \(rngs.noise\)"):
        jaxoip.from_nnx(Noisy(), (28, 28, 1))


def test_ctrl_c_lands_while_a_search_chunk_runs():
    import signal
    import time

    from planted import COARSE, DEAD, planted_model

    trained = planted_model()
    cfg = OIPConfig(steps=10_000, early_stop=True)
    x0 = np.asarray(jaxoip.initial_images(jaxoip.start_keys(0, [0], 8).reshape(-1), ["fine"]))
    # Compiled here and soon done: the coarse map converges in a few hundred steps; the dead one never does.
    assert search_oips(trained.model, "Conv2D_2", np.full(8, COARSE), x0, cfg).steps_run < 2000

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):  # All 10,000 steps of a dead map: seconds.
            search_oips(trained.model, "Conv2D_2", np.full(8, DEAD), x0, cfg)
        assert time.monotonic() - t0 < 1.5  # Not when the chunk returns (4 s alone on a 2-core VM).
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_an_interrupt_after_work_was_kept_names_resume(tmp_path, capsys):
    from jaxoip._io import prepare_output

    def main(argv):
        with prepare_output(tmp_path / "out", "x", {}) as out:
            out.partial.mkdir(parents=True, exist_ok=True)
            (out.partial / "group_00000.npz").write_bytes(b"kept")
            raise KeyboardInterrupt

    assert cli.run(main, []) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"interrupted; the work done is kept in {tmp_path / 'out'}: run the command again with --resume"


def test_a_model_too_large_is_named_not_the_options(tmp_path, monkeypatch):
    from jaxoip.models.cnn import ModelConfig
    from jaxoip.models.memory import check_fits

    # A Dense layer of 10**12 units in a file that holds 4x2 weights: refused from shapes, nothing allocated.
    huge = _keras_zip(tmp_path / "huge.keras", [np.ones((4, 2), np.float32), np.zeros(2, np.float32)], 10**12)
    with pytest.raises(CheckpointError, match=r"weight shapes do not fit the layer config \(dense: "):
        jaxoip.load_model(huge)
    # Labels up to 1e9 make an output layer of 1e9 units: no batch size helps.
    monkeypatch.setattr("jaxoip.models.memory.available_bytes", lambda: 8 * 2**30)
    config = ModelConfig(conv=((4, 3, "relu"),), pool=(2,), dense=((10**9, "softmax"),))
    with pytest.raises(OutOfMemoryError, match=r"the model is too large for this device: one image needs") as e:
        check_fits(config, 128, "a training batch", "--batch-size")
    assert "largest layer, Dense_1, is 1000000000" in str(e.value) and "--batch-size" not in str(e.value)


def test_activations_defaults_fit_the_model(tmp_path, capsys):
    (tmp_path / "f.py").write_text(
        "import jaxoip\nfrom test_fault_edges import TinyNet\n"
        "def factory():\n    return jaxoip.from_nnx(TinyNet(), (28, 28, 1))\n"
    )
    base = ["--model", f"{tmp_path / 'f.py'}:factory", "--data", str(_npz(tmp_path / "d.npz"))]
    # --per-row's default 8 is clamped to the 4 maps of stem; the confusion matrix needs no --layer.
    assert (
        cli.run(activations_cmd.main, [*base, "--layer", "stem", "--image", "test:0", "--out", str(tmp_path / "a")])
        == 0
    )
    assert cli.run(activations_cmd.main, [*base, "--confusion", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "confusion.png").is_file()
    argv = [*base, "--layer", "stem", "--image", "test:0", "--per-row", "5", "--out", str(tmp_path / "c")]
    assert cli.run(activations_cmd.main, argv) == 2
    assert "--per-row 5 is more than the 4 maps of stem" in capsys.readouterr().err


def test_the_plain_view_says_it_is_clipped_and_a_linear_unit_is_never_dead(tmp_path, monkeypatch):
    from matplotlib.text import Text
    from planted import planted_model

    from jaxoip.oip import scan
    from jaxoip.oip.figures import oip_gallery
    from jaxoip.progress import Progress
    from jaxoip.site import write_scan_site

    # The bar has its total (the search's image-steps) from the first phase on, and counts it once.
    bar, totals = Progress(False), []
    run_precursor = scan.run_precursor
    monkeypatch.setattr(scan, "run_precursor", lambda *a, **k: totals.append(bar.total) or run_precursor(*a, **k))

    # Blank images: the linear Conv2D_1 (patch sums) is 0 on all of them, and not dead for that.
    blank = np.zeros((6, 28, 28), np.uint8)
    np.savez(tmp_path / "blank.npz", x_train=blank, y_train=np.arange(6), x_test=blank, y_test=np.arange(6))
    result = jaxoip.scan_maps(
        planted_model(), "Conv2D_1", [0], 2, OIPConfig(steps=5), precursor_starts=4, progress=bar, quality=None,
        data=jaxoip.load_images(tmp_path / "blank.npz"),
    )  # fmt: skip
    assert totals == [1 * 2 * 5] and bar.total == 10 and bar.done >= 10
    assert result.data_max[0] == 0 and not result.table()["dead_on_data"].any()
    assert result.summary().dead_on_data == 0
    assert result.summary().to_dict()["data_source"] == f"npz:{(tmp_path / 'blank.npz').resolve()}"
    # Standardization (0, 1): pixels are the standardized images, about half of them below 0.
    texts = " ".join(t.get_text() for t in oip_gallery(result).findobj(Text))
    assert "plain: pixels clipped to 0-255, where" in texts.replace("\n", " ") and "dead on data" not in texts
    write_scan_site(result, tmp_path / "site")
    page = (tmp_path / "site" / "site" / "map000.html").read_text()
    assert "pixels clipped to 0–255, where" in page
    # The objective trace has axes: ticks at steps 1 and 5 (the last), and at its lowest and highest values.
    ticks = re.findall(r'<text x="[\d.]+" y="[\d.]+" text-anchor="middle">(\d+)</text>', page)
    assert ticks == ["1", "5"] and page.count('text-anchor="end"') == 2
    # The overview leads with what a reader wants; the precursor's columns come last, folded.
    index = (tmp_path / "site" / "index.html").read_text()
    names = re.findall(r"<th class=\"[^\"]*\">([a-z_0-9]+)</th>", index)
    assert names[:4] == ["map", "best_objective", "method", "facets"] and names[-1].startswith("pre_")
    folded = sum(n.startswith("pre_") for n in names)
    assert '<table id="maps" class="folded">' in index and f"show the precursor's {folded} columns" in index


def test_only_relu_units_can_be_dead():
    from planted import PLANTED_CONFIG

    from jaxoip.models.cnn import ModelConfig
    from jaxoip.models.network import find_layer
    from jaxoip.oip.config import ObjectiveConfig
    from jaxoip.oip.objectives import from_config

    def can_be_dead(config, name, options=ObjectiveConfig()):
        return from_config(find_layer(config, name), None, options).can_be_dead

    study = ModelConfig()
    assert can_be_dead(study, "Conv2D_3") and can_be_dead(study, "Max_Pool_2")
    assert not can_be_dead(study, "Dense_2")  # Softmax: the search takes the class logits.
    assert not can_be_dead(study, "Conv2D_3", ObjectiveConfig(quantity="pre"))
    assert not can_be_dead(PLANTED_CONFIG, "Conv2D_1")  # A linear convolution.


def test_help_names_what_model_takes_and_what_train_does(tmp_path):
    import subprocess
    import sys

    from jaxoip.cli import microscope, scan_all_maps

    for command in (scan_all_maps, activations_cmd, microscope):
        assert "file.py:factory" in " ".join(command._parser().format_help().split())
    top = subprocess.run([sys.executable, "-m", "jaxoip", "--help"], capture_output=True, text=True, check=True)
    assert "train the study's CNN on MNIST" not in top.stdout and "--data" in top.stdout
    (tmp_path / "mynet.py").write_text("")
    with pytest.raises(CheckpointError, match=r"mynet.py: name the function that returns the model, as in .*:factory"):
        jaxoip.load_model(tmp_path / "mynet.py")
    assert "10, 19, 37" in " ".join(scan_all_maps._parser().format_help().split())  # As the README says.


def test_the_console_and_summary_count_the_same_compilations(tmp_path, capsys):
    import re

    from jaxoip.cli import scan_all_maps

    (tmp_path / "f.py").write_text(
        "import jaxoip\nfrom test_fault_edges import TinyNet\n"
        "def factory():\n    return jaxoip.from_nnx(TinyNet(), (28, 28, 1))\n"
    )
    argv = ["--model", f"{tmp_path / 'f.py'}:factory", "--layer", "stem", "--maps", "0-1", "--steps", "5"]
    argv += ["--restarts", "2", "--precursor-starts", "4", "--exemplars", "2", "--no-progress", "--no-cache"]
    argv += ["--data", str(_npz(tmp_path / "d.npz")), "--out", str(tmp_path / "o")]
    assert cli.run(scan_all_maps.main, argv) == 0
    console = int(re.search(r"(\d+) programs compiled", capsys.readouterr().out)[1])
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["compiled_programs"] == console and summary["data_source"].startswith("npz:")


def test_class_names_are_kept_and_shown(tmp_path):
    import pandas as pd
    from matplotlib.text import Text

    from jaxoip.analysis.figures import plot_confusion_matrix, plot_predictions

    cifar = tmp_path / "cifar"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 2]}))
    (cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane", b"automobile", b"bird"]}))
    data = jaxoip.load_images(cifar)
    assert data.class_names == ("airplane", "automobile", "bird") and data.class_name(7) == "7"
    texts = {
        t.get_text() for t in plot_confusion_matrix(np.eye(3, dtype=int), class_names=data.class_names).findobj(Text)
    }
    assert {"airplane", "automobile", "bird"} <= texts
    table = pd.DataFrame({"index": [0], "label": [0], "predicted": [2], "p_predicted": [0.9]})
    fig = plot_predictions(table, data.test_images, class_names=data.class_names)
    assert any("airplane -> bird" in t.get_text() for t in fig.findobj(Text))


def test_class_names_in_exemplar_figures_and_map_pages(tmp_path):
    import dataclasses

    from matplotlib.text import Text
    from planted import COARSE, planted_model

    from jaxoip.analysis.data_views import data_views
    from jaxoip.analysis.exemplars import find_exemplars
    from jaxoip.analysis.figures import plot_exemplars, plot_layer_grid
    from jaxoip.analysis.grids import layer_grid
    from jaxoip.site import write_scan_site
    from jaxoip.site.images import exemplar_tiles

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 28, 28)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(8) % 3, x_test=x, y_test=np.arange(8) % 3)
    digits = jaxoip.load_images(tmp_path / "d.npz")
    named = dataclasses.replace(digits, class_names=("cat", "dog", "ship"))
    trained = planted_model(threshold=10.0)
    result = jaxoip.scan_maps(
        trained, "Conv2D_2", [COARSE], 2, OIPConfig(steps=3), precursor_starts=4, progress=False, quality=None,
        data=named,
    )  # fmt: skip
    for data, shown in ((named, True), (digits, False)):
        ex = find_exemplars(trained, data, "Conv2D_2", k=3)
        classes = [data.class_name(data.test_labels[n]) for n in ex.image_indices[COARSE]]
        texts = [t.get_text() for t in plot_exemplars(ex, labels=data.test_labels, class_names=data.class_names)
                 .findobj(Text)]  # fmt: skip
        label = next(t for t in texts if t.startswith(f"map {COARSE}:"))
        assert ("mostly" in label) == shown
        grid = layer_grid(trained, "Conv2D_2", "test:1", data)
        title = " ".join(t.get_text() for t in plot_layer_grid(grid, class_names=data.class_names).findobj(Text))
        assert ("label dog," in title) == shown and ("label 1," in title) != shown
        folder = tmp_path / f"site_{shown}"
        views = data_views(trained, data, "Conv2D_2", ex)
        assert not views.colour and views.heat[COARSE].shape == (3, 28, 28)
        assert exemplar_tiles(views.images[COARSE], views.heat[COARSE]).shape == (3, 28, 28, 3)  # Grey: red over.
        write_scan_site(result, folder, exemplars=ex, views=views)
        page = (folder / "site" / f"map{COARSE:03d}.html").read_text()
        captions = re.findall(r"image (\d+)( \((\w+)\))?<br>", page)
        assert [int(n) for n, _, _ in captions] == ex.image_indices[COARSE].tolist()
        assert [c for _, _, c in captions] == (classes if shown else ["", "", ""])  # MNIST-like data: no names.


# A child `train` whose epoch program also runs a loop of minutes; it prints "dispatching" right before the
# first epoch's program is traced, compiled (a few seconds) and started.
_SLOW_TRAIN = """
import sys
import jax
import jax.numpy as jnp
from jaxoip import cli
from jaxoip.cli import train as command
from jaxoip.models import train as training

real_epoch, real_batches = training.make_train_epoch, training.epoch_batches

def make_train_epoch(graphdef, cfg):
    tx, epoch = real_epoch(graphdef, cfg)

    def slow(params, opt_state, images, labels, idx, weights):
        params, opt_state, (loss, acc, n) = epoch(params, opt_state, images, labels, idx, weights)
        x = jnp.full((384, 384), 1 / 384) + images.mean() * 1e-9
        x = jax.lax.fori_loop(0, 100_000, lambda i, v: jnp.tanh(v @ v.T), x)
        return params, opt_state, (loss + 0 * x[0, 0], acc, n)

    return tx, slow

def epoch_batches(*a, **k):
    print("dispatching", flush=True)
    return real_batches(*a, **k)

training.make_train_epoch, training.epoch_batches = make_train_epoch, epoch_batches
cli.execute(command.main, sys.argv[1:])  # As `python -m jaxoip train` ends.
"""


def test_ctrl_c_ends_training_while_an_epoch_runs(tmp_path):
    """A Ctrl-C while the first epoch's program runs ends `train` within seconds with one line, instead of once
    the epoch is done (33 s for an MNIST epoch on a loaded 2-core CPU)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    x = np.random.default_rng(0).integers(0, 255, (16, 28, 28)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(16) % 2, x_test=x[:4], y_test=np.arange(4) % 2)
    argv = ["--data", str(tmp_path / "d.npz"), "--conv", "2:3:relu", "--pool", "2", "--dense", "2:softmax"]
    argv += ["--epochs", "1", "--batch-size", "8", "--no-progress", "--no-cache", "--out", str(tmp_path / "m")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen(
        [sys.executable, "-c", _SLOW_TRAIN, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert p.stdout.readline() == "dispatching\n", p.communicate()
        # Compiled by then and running (an interrupt during compilation lands right after it, before any wait).
        time.sleep(8)
        p.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, err = p.communicate(timeout=45)
        seconds = time.monotonic() - t0
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 130 and err.strip() == "interrupted", err
    assert seconds < 10  # A poll; the loop alone takes minutes.
