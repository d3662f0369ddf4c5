"""The sites' files without a browser: the command's switch, the marker, the notebook view, escaping."""

import base64
import dataclasses
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxoip import cli, display
from jaxoip.cli import scan_all_maps
from jaxoip.oip.scan import scan_maps
from jaxoip.oip.search import OIPConfig
from jaxoip.site import images as im
from jaxoip.site import write_scan_site
from jaxoip.site.scan_site import fmt

ARGS = ["--steps", "6", "--restarts", "2", "--precursor-starts", "4", "--no-progress", "--maps", "0-1"]


@pytest.fixture(scope="module")
def small_scan(tiny_trained, mnist):
    return scan_maps(
        tiny_trained, "Conv2D_3", [0, 1, 5], 3, OIPConfig(steps=5), precursor_starts=4, data=mnist, progress=False
    )


def test_command_lists_the_site_in_its_marker_and_no_html_turns_it_off(tiny_checkpoint, mnist, tmp_path):
    out = tmp_path / "with"
    assert cli.run(scan_all_maps.main, ["--model", str(tiny_checkpoint), "--out", str(out), *ARGS]) == 0
    marker = json.loads((out / ".jaxoip.json").read_text())
    assert {"index.html", "site"} <= set(marker["files"])
    written = {p.relative_to(out).as_posix() for p in (out / "site").rglob("*") if p.is_file()}
    assert {"site/map000.html", "site/map001.html", "site/site.js"} <= written
    assert written <= set(marker["tree"])  # Every file the site wrote is jaxoip's, so --overwrite replaces it.
    page = (out / "site" / "map001.html").read_text()
    assert "Activation over the test images" in page and "_exemplars.png" in page
    bare = tmp_path / "without"
    assert cli.run(scan_all_maps.main, ["--model", str(tiny_checkpoint), "--out", str(bare), "--no-html", *ARGS]) == 0
    names = {p.name for p in bare.iterdir()}
    assert "maps.csv" in names and not names & {"index.html", "site"}


def test_site_without_data_or_exemplars(small_scan, tmp_path):
    result = dataclasses.replace(small_scan, data_mean=None, data_max=None, data_histogram=None)
    index = write_scan_site(result, tmp_path)
    text = index.read_text()
    assert "dead_on_data" not in text and text.count('href="site/map00') == 6  # Thumbnail and number link.
    page = (tmp_path / "site" / "map005.html").read_text()
    assert "No exemplars" in page and "Activation over" not in page
    assert 'rel="prev" href="map001.html"' in page and 'rel="next"' not in page  # The last map has no next.
    assert "dead on data</button>" not in text  # No filter button for a column the table lacks.


def test_scan_keeps_each_maps_objective_histogram_over_the_test_images(small_scan, mnist):
    edges, counts = small_scan.data_histogram
    layer_maps = len(small_scan.data_mean)
    assert edges.shape == (layer_maps, 31) and counts.shape == (layer_maps, 30)
    assert (counts.sum(axis=1) == len(mnist.test_images)).all()
    varied = small_scan.data_max > edges[:, 0]  # A map constant on the data (dead: all 0) gets the range [0, 1].
    np.testing.assert_allclose(edges[varied, -1], small_scan.data_max[varied], rtol=1e-6)
    assert (edges[~varied, -1] == edges[~varied, 0] + 1).all()
    assert (edges[:, 0] <= small_scan.data_mean).all() and (small_scan.data_mean <= edges[:, -1]).all()


def test_user_text_is_escaped(small_scan, tmp_path):
    evil = "<script>alert(1)</script>"
    write_scan_site(dataclasses.replace(small_scan, layer_name=evil), tmp_path, model=f"/m/{evil}")
    for page in [tmp_path / "index.html", *(tmp_path / "site").glob("*.html")]:
        text = page.read_text()
        assert evil not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text, page


def test_images_keep_grey_and_colour():
    grey = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4, 1)
    colour = np.stack([grey[..., 0], 1 - grey[..., 0], grey[..., 0] * 0], axis=-1)
    assert im.to_uint8(grey).shape == (3, 4) and im.to_uint8(colour).shape == (3, 4, 3)
    assert im.strip([colour, colour]).shape == (3, 9, 3)
    with pytest.raises(ValueError, match="shape"):
        im.to_uint8(np.zeros((3, 4, 2)))
    decoded = Image.open(io.BytesIO(base64.b64decode(im.data_uri(colour).split(",", 1)[1])))
    assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), im.to_uint8(colour))


def test_repr_html_shows_every_map_with_inline_thumbnails(small_scan):
    html = small_scan._repr_html_()
    assert html.count("<tr>") == 1 + 3 and html.count('src="data:image/png;base64,') == 6
    for label in small_scan.labels:
        assert f"<td>{label}</td>" in html
    uri = html.split('src="', 2)[1].split('"', 1)[0]
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    expected = im.to_uint8(im.pixels01(small_scan.standardization.to_pixels(small_scan.best_images[0])))
    assert np.array_equal(thumb, expected)
    assert f"{small_scan.summary().found} of 3 maps" in html
    evil = dataclasses.replace(small_scan, layer_name="<b>x</b>")._repr_html_()
    assert "<b>x</b>" not in evil and "&lt;b&gt;x&lt;/b&gt;" in evil


def test_the_scan_result_knows_no_site_and_its_view_is_registered():
    """`jaxoip.oip` imports no view: the notebook's view is registered (`jaxoip.display`) and imported when asked."""
    code = "import sys, jaxoip.oip.scan_result, jaxoip.oip.scan\n"
    code += "print(any(m.startswith('jaxoip.site') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_registered_view_draws_its_class_and_subclasses():
    class Shown:
        pass

    class Sub(Shown):
        pass

    name = f"{Shown.__module__}.{Shown.__qualname__}"
    assert display.html(Shown()) is None  # Nothing registered: Jupyter shows the repr.
    display.register_html(name, lambda obj: f"<p>{type(obj).__name__}</p>")
    try:
        assert display.html(Shown()) == "<p>Shown</p>" and display.html(Sub()) == "<p>Sub</p>"
        display.register_html(name, "builtins:repr")  # By module path: imported at the first view.
        assert display.html(Shown()).startswith(f"<{Shown.__module__}.")
    finally:
        del display._HTML[name]


def test_the_site_links_each_map_to_its_most_similar_maps(small_scan, tmp_path):
    order, r = small_scan.similar_maps(2)
    assert order.shape == (3, 2) and (order != np.arange(3)[:, None]).all()
    write_scan_site(small_scan, tmp_path)
    page = (tmp_path / "site" / "map000.html").read_text()
    for q, v in zip(order[0], r[0]):
        assert f"map{small_scan.map_indices[q]:03d}.html" in page and fmt(v) in page


def test_microscope_resumes_a_killed_run(tiny_checkpoint, mnist, tmp_path, monkeypatch, capsys):
    from jaxoip.cli import microscope
    from jaxoip.oip import groups

    out = tmp_path / "micro"
    argv = ["--model", str(tiny_checkpoint), "--layers", "Conv2D_1,Dense_2", "--out", str(out), "--steps", "3"]
    argv += ["--restarts", "2", "--precursor-starts", "4", "--exemplars", "1", "--no-progress"]
    real, calls = groups.run_search, []

    def stop_in_the_second_layer(*a, **k):
        if len(calls) == 1:  # Conv2D_1's one group is done and kept; Ctrl-C during Dense_2's.
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(groups, "run_search", stop_in_the_second_layer)
        assert cli.run(microscope.main, argv) == 130
    assert capsys.readouterr().err.strip() == (
        f"interrupted; the work done is kept in {out}: the finished search of Conv2D_1 (the files and sites are "
        "written once every layer is done); run the command again with --resume"
    )
    assert json.loads((out / ".jaxoip.json").read_text())["status"] == "running"
    assert not (out / "index.html").exists()
    with monkeypatch.context() as m:
        searched = []
        m.setattr(groups, "run_search", lambda *a, **k: searched.append(1) or real(*a, **k))
        assert cli.run(microscope.main, [*argv, "--resume"]) == 0
    assert searched == [1]  # Only Dense_2 searched again.
    assert json.loads((out / ".jaxoip.json").read_text())["status"] == "complete"
    assert 'href="Conv2D_1/index.html"' in (out / "index.html").read_text()


def test_overview_shows_each_two_choice_value_with_its_interval():
    import pandas as pd

    from jaxoip.site.scan_site import overview_cells

    table = pd.DataFrame(
        {"map": [0, 1], "two_choice_oip": [0.78, float("nan")], "two_choice_oip_lo": [0.6893, float("nan")]}
        | {"two_choice_oip_hi": [0.85, float("nan")], "stability": [0.5, 0.25]}
    )
    cols, rows = overview_cells(table)
    assert cols == ["map", "two_choice_oip", "stability"]  # The bounds sit in the value's cell (maps.csv keeps them).
    assert rows[0][1] == {"text": "0.78 [0.6893, 0.85]", "key": repr(0.78)}  # Sorted and filtered by the value.
    assert rows[1][1]["text"] == ""  # No trials, no interval.


def test_a_map_page_lays_its_facets_out_side_by_side_and_folds_the_rest(colour_scan, tmp_path):
    """A colour map of 8 one-start facets ran long, one block per facet; now a row of small figures, the facets
    beyond SHOWN_FACETS folded under one "+k more" line, every start still on the page with its objective."""
    import re

    from jaxoip.site.scan_site import SHOWN_FACETS

    facets = colour_scan.facets()[0]
    n = len(facets.representatives)
    assert n > SHOWN_FACETS and colour_scan.best_images.shape[-1] == 3  # A colour map with facets to fold.
    write_scan_site(colour_scan, tmp_path)
    page = (tmp_path / "site" / "map000.html").read_text()
    shown, folded = page.split('<details class="more">')
    assert shown.count('<figure class="facet">') == SHOWN_FACETS
    assert folded.count('<figure class="facet">') == n - SHOWN_FACETS
    more = re.search(r"<summary>\+(\d+) more facets? \((\d+) starts?, best objectives ([^<]*)\)</summary>", folded)
    assert more and int(more[1]) == n - SHOWN_FACETS and int(more[2]) == facets.sizes[SHOWN_FACETS:].sum(), more
    # Every faceted start once, with its objective, in caption and alt text (plain and enhanced).
    objective = colour_scan.objective[0]
    for s in np.flatnonzero(facets.labels >= 0):
        value = fmt(objective[s])
        assert page.count(f">#{s} {value}</span>") == 1, s
        assert len(re.findall(rf'alt="facet \d+: [^"]*start {s} \(objective {re.escape(value)}\)', page)) == 2, s
    assert all(a.strip() for a in re.findall(r'<img [^>]*alt="([^"]*)"', page))
    assert len(re.findall(r"<img ", page)) == len(re.findall(r'<img [^>]*alt="', page))


def test_the_files_and_the_site_each_build_the_scans_table_once(colour_scan, tmp_path, monkeypatch):
    """`summary(table)` is `summary()` from a table at hand: the files and the site each build the table once."""
    from jaxoip.oip.scan import write_scan_files
    from jaxoip.oip.scan_result import ScanResult

    assert colour_scan.summary(colour_scan.table()) == colour_scan.summary()
    built = []
    table = ScanResult.table
    monkeypatch.setattr(ScanResult, "table", lambda self: built.append(self) or table(self))
    write_scan_files(colour_scan, tmp_path)
    assert len(built) == 1
    write_scan_site(colour_scan, tmp_path)
    assert len(built) == 2
