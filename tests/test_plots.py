"""Figures (`jaxoip.figures` and each subpackage's `figures`): one-epoch history, one dpi, one grey scale for
exemplars, dead maps, small galleries, target labels."""

import dataclasses

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from planted import DEAD, planted_model

from jaxoip import figures
from jaxoip.analysis.exemplars import Exemplars, find_exemplars
from jaxoip.analysis.figures import plot_exemplars
from jaxoip.data.mnist import Standardization
from jaxoip.models.cnn import ModelConfig
from jaxoip.models.figures import plot_history
from jaxoip.models.network import find_layer
from jaxoip.oip.figures import oip_gallery, snapshot_strip, write_snapshot_strips
from jaxoip.oip.objectives import objective
from jaxoip.oip.scan_result import ScanResult
from jaxoip.oip.search import OIPConfig, OIPResult


def _result(layer="Conv2D_3", maps=(0, 1), restarts=2, weighted=(), data_max=None) -> ScanResult:
    """A ScanResult with made-up arrays (no search), enough for the figures."""
    rng = np.random.default_rng(0)
    n = len(maps) * restarts
    oip = OIPResult(
        images=rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
        objective=np.linspace(0.5, 2.0, n).astype(np.float32),
        traces=np.tile(np.linspace(0.1, 2.0, 4, dtype=np.float32), (n, 1)),
        snapshots=rng.normal(size=(n, 2, 28, 28, 1)).astype(np.float32),
        snapshot_steps=(0, 3),
        converged_step=np.full(n, -1),
        stayed_zero=np.zeros(n, bool),
        steps_run=4,
    )
    return ScanResult(
        layer_name=layer,
        map_indices=np.asarray(maps, np.int32),
        restarts=restarts,
        node=None,
        config=OIPConfig(steps=4),
        target=objective(find_layer(ModelConfig(), layer), weighted=weighted),
        recipe_names=("uniform",),
        start_recipe=np.zeros((len(maps), restarts), np.int32),
        oip=oip,
        precursor=None,
        data_mean=None,
        data_max=data_max,
        standardization=Standardization(0.13, 0.31),
        seed=0,
    )


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


def test_one_epoch_history_shows_its_points():
    h = {"loss": [0.5], "val_loss": [0.4], "accuracy": [0.9], "val_accuracy": [0.92]}
    fig = plot_history(h)
    for ax in fig.axes:
        lines = ax.get_lines()
        assert len(lines) == 2
        for line in lines:
            assert line.get_marker() not in (None, "None", "") and line.get_markersize() > 0
        lo, hi = ax.get_xlim()
        assert lo < 1 < hi


def test_figures_have_one_dpi(tmp_path):
    fig, _ = figures.subplots(figsize=(2, 1))
    assert fig.dpi == figures.DPI == 150
    path = figures.save_figure(fig, tmp_path / "f.png", tight=False)
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[:2] == (150, 300)
    gallery = oip_gallery(_result(), tmp_path / "g.png")
    assert gallery.dpi == figures.DPI
    w, h = gallery.get_size_inches() * figures.DPI
    assert np.allclose(matplotlib.image.imread(tmp_path / "g.png").shape[:2], (h, w), atol=1)


def _gallery_patch_rgba(fig, patch, e):
    """The colours of exemplar `e` of the first map, as the gallery draws them."""
    im = fig.axes[0].images[0]
    ph, pw = patch.shape
    y, x = 9 + (28 - ph) // 2, (2 + e) * 29 + (28 - pw) // 2  # Label rows, then plain and enhanced tiles.
    return im.to_rgba(im.get_array()[y : y + ph, x : x + pw])


def _exemplars_patch_rgba(fig, patch, e):
    """The colours of exemplar `e` of the first map, as `plot_exemplars` draws them."""
    im = fig.axes[0].images[0]
    ph, pw = patch.shape
    y, x = 5, e * (pw + 1)
    return im.to_rgba(im.get_array()[y : y + ph, x : x + pw])


def test_exemplars_have_the_same_grey_in_the_gallery_and_the_exemplars_figure():
    # A white stroke on black, as MNIST stores digits: bright pixels must be drawn light in both figures.
    patch = np.zeros((18, 18), np.float32)
    patch[4:14, 8:10] = 255.0
    patch[0, 0] = 128.0
    patches = np.stack([patch, patch[::-1]])
    ex = Exemplars(
        "Conv2D_3", "test", np.array([[0, 1], [2, 3]]), np.array([[3.0, 2.0], [1.0, 0.5]]), np.zeros((2, 2, 2)), []
    )
    ex.patches = [patches, patches]
    gallery = oip_gallery(_result(), exemplars={0: patches, 1: patches})
    figure = plot_exemplars(ex)
    for e in range(2):
        a, b = _gallery_patch_rgba(gallery, patches[e], e), _exemplars_patch_rgba(figure, patches[e], e)
        np.testing.assert_array_equal(a, b)
        stroke = patches[e] == 255
        assert (a[stroke][:, :3] == 1).all() and (a[patches[e] == 0][:, :3] == 0).all()  # white on black


def test_dead_map_has_no_exemplars_and_is_labelled_so(mnist):
    small = dataclasses.replace(mnist, test_images=mnist.test_images[:40], test_labels=mnist.test_labels[:40])
    ex = find_exemplars(planted_model(), small, "Conv2D_2", k=3)
    assert ex.dead.tolist() == [True, False]
    assert len(ex.patches[DEAD]) == 0 and (ex.image_indices[DEAD] == -1).all() and (ex.nodes[DEAD] == -1).all()
    assert len(ex.patches[1]) == 3 and (ex.values[1] > 0).all()
    texts = _texts(plot_exemplars(ex))
    assert f"map {DEAD}: dead on data" in texts and not any(t.startswith("map 1: dead") for t in texts)
    # The gallery says so too, from the data pass or from an empty exemplar list.
    result = _result(maps=(0, 1), data_max=np.array([-0.5, 2.0]))
    texts = _texts(oip_gallery(result, exemplars={0: ex.patches[DEAD], 1: ex.patches[1]}))
    assert any(t.startswith("map 0:") and "dead on data" in t for t in texts)
    assert not any(t.startswith("map 1:") and "dead on data" in t for t in texts)


def test_small_gallery_is_legible_and_keeps_its_title():
    fig = oip_gallery(_result(layer="Dense_2", maps=(4,), restarts=2))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    title = fig.texts[0]
    box, page = title.get_window_extent(renderer), fig.bbox
    assert box.x0 >= page.x0 and box.x1 <= page.x1 and box.y1 <= page.y1
    im = fig.axes[0].images[0]
    tile_px = 28 * im.get_window_extent(renderer).width / im.get_array().shape[1]
    assert tile_px >= 100  # A 28-pixel OIP at least 100 pixels wide, not a 99-pixel-wide figure.
    assert fig.get_size_inches()[0] * fig.dpi >= 500


FOUR_NOT_NINE, SEVEN = ((4, 1.0), (9, -1.0)), ((7, 1.0),)


@pytest.mark.parametrize("weighted, labels", [((), ["map 0", "map 1"]), ((FOUR_NOT_NINE, SEVEN), ["4-9", "7"])])
def test_targets_are_labelled_by_their_description(weighted, labels):
    result = _result(layer="Dense_2", weighted=weighted)
    assert result.labels == labels
    texts = _texts(oip_gallery(result))
    for label in labels:
        assert any(t.startswith(f"{label}: ") for t in texts)
    assert f"Dense_2 {labels[0]}: best of 2 starts" in _texts(snapshot_strip(result, 0))


def test_snapshot_strips_drawn_on_one_figure_have_each_maps_own_pixels(tmp_path):
    """`write_snapshot_strips` redraws one figure for every map: each PNG has the pixels of that map's own
    `snapshot_strip`, however far apart the maps' traces (the plot's limits) are."""
    import matplotlib.image

    result = _result(maps=(3, 0, 5), restarts=2)
    result.oip.traces[:] *= np.repeat([1.0, 40.0, 0.01], 2)[:, None]  # Each map's trace on its own scale.
    paths = write_snapshot_strips(result, [5, 3, 0], tmp_path / "one")
    assert [p.name for p in paths] == ["snapshots_map005.png", "snapshots_map003.png", "snapshots_map000.png"]
    for path in paths:
        m = int(path.stem[-3:])
        alone = tmp_path / "alone" / path.name
        fig = snapshot_strip(result, m, alone)
        np.testing.assert_array_equal(matplotlib.image.imread(path), matplotlib.image.imread(alone))
        trace = result.traces[list(result.map_indices).index(m)].max(axis=0)  # The best start's: all alike here.
        lo, hi = fig.axes[1].get_ylim()
        assert lo < trace.min() and trace.max() < hi and hi - lo < 2 * (trace.max() - trace.min())
    assert write_snapshot_strips(result, [], tmp_path / "none") == []
