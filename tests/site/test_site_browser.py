"""The scan's site in a real browser: the OS's headless Chromium, driven by Playwright (no browser download)."""

import dataclasses
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxoip import cli
from jaxoip.cli import scan_all_maps
from jaxoip.oip.scan import scan_maps
from jaxoip.oip.search import OIPConfig
from jaxoip.site import write_scan_site

ARGS = ["--steps", "12", "--restarts", "3", "--precursor-starts", "8", "--no-progress", "--exemplars", "2"]
EVIL = "<script>window.pwned=1</script>"


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium: install the OS package (Debian: apt-get install chromium; .ci/run does)")
    return path


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="no Playwright: pip install -e '.[test]'")
    path = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def scan_site(tiny_checkpoint, mnist, tmp_path_factory):
    """A scan of 4 maps by the command, from a model whose path holds a <script> element."""
    model = tmp_path_factory.mktemp("model") / f"m{EVIL}"
    shutil.copytree(tiny_checkpoint, model)
    out = tmp_path_factory.mktemp("site") / "out"
    assert cli.run(scan_all_maps.main, ["--model", str(model), "--maps", "0-2,7", "--out", str(out), *ARGS]) == 0
    return out


def _open(browser, url):
    """A page at `url`, with the console errors and uncaught exceptions it logs."""
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_load_state("load")
    return page, errors


def _images(page) -> list:
    return page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")


def _not_blank(page, path):
    page.screenshot(path=str(path), full_page=True)
    pixels = np.asarray(Image.open(path).convert("L"), np.float64)
    assert pixels.var() > 0, f"{path} is blank"


def _column(page, name: str) -> list[str]:
    return page.evaluate(
        """name => {
          const heads = Array.from(document.querySelectorAll('#maps tr.names th')).map(h => h.textContent);
          const col = heads.indexOf(name);
          return Array.from(document.querySelectorAll('#maps tbody tr'))
            .filter(r => !r.hidden).map(r => r.cells[col].textContent);
        }""",
        name,
    )


def test_overview_loads_sorts_filters_and_links(browser, scan_site, tmp_path):
    page, errors = _open(browser, (scan_site / "index.html").as_uri())
    imgs = _images(page)
    assert len(imgs) == 4 and all(ok and w > 0 for _, ok, w in imgs), imgs
    assert _column(page, "map") == ["0", "1", "2", "7"]
    # Sorting by a column reorders the rows: ascending, then descending on a second click.
    best = page.locator("#maps tr.names th", has_text="best_objective")
    best.click()
    up = _column(page, "best_objective")
    assert [float(v) for v in up] == sorted(float(v) for v in up)
    order_up = _column(page, "map")
    best.click()
    assert _column(page, "map") == order_up[::-1] and order_up != ["0", "1", "2", "7"][::-1] or len(set(up)) == 1
    # A comparison filter hides the rows it excludes.
    page.fill("tr.filters input[data-name='map']", ">=2")
    assert sorted(_column(page, "map")) == ["2", "7"]
    assert "2 of 4 maps shown" in page.inner_text("#shown")
    page.fill("tr.filters input[data-name='map']", "")
    _not_blank(page, tmp_path / "overview.png")
    # The model path with a <script> element is shown as text and never runs.
    assert EVIL in page.inner_text("#model")
    assert page.evaluate("window.pwned") is None
    # Following a row's link opens that map's page, with its images.
    first = _column(page, "map")[0]
    page.locator("#maps tbody tr").first.locator("a").last.click()
    page.wait_for_load_state("load")
    assert page.url.endswith(f"site/map{int(first):03d}.html")
    assert f"map {first}" in page.inner_text("h1")
    imgs = _images(page)
    assert len(imgs) >= 5 and all(ok and w > 0 for _, ok, w in imgs), imgs
    assert errors == []


def test_map_page_shows_its_parts(browser, scan_site, tmp_path):
    page, errors = _open(browser, (scan_site / "site" / "map001.html").as_uri())
    text = page.inner_text("body")
    for part in ("Facet 0", "snapshots and objective", "Precursor", "Exemplars", "Activation over the test", "Numbers"):
        assert part in text, part
    assert page.locator("svg polyline").count() == 1 and page.locator("svg rect.bar").count() > 0
    srcs = [s for s, ok, w in _images(page) if ok and w > 0]
    assert any("exemplars" in s for s in srcs) and any("snapshots" in s for s in srcs)
    assert len(srcs) == len(_images(page))
    # Previous and next, and the most similar maps, link to pages that exist.
    assert page.get_attribute("a[rel=prev]", "href") == "map000.html"
    assert page.get_attribute("a[rel=next]", "href") == "map002.html"
    assert page.locator(".similar a").count() == 3
    _not_blank(page, tmp_path / "map.png")
    page.click("a[rel=next]")
    page.wait_for_load_state("load")
    assert "map 2" in page.inner_text("h1")
    assert errors == []


def test_layer_name_with_script_is_text(browser, tiny_trained, mnist, tmp_path):
    result = scan_maps(
        tiny_trained, "Conv2D_3", [0, 1], 2, OIPConfig(steps=4), precursor_starts=4, data=mnist, progress=False
    )
    index = write_scan_site(dataclasses.replace(result, layer_name=EVIL), tmp_path)
    for url in (index.as_uri(), (tmp_path / "site" / "map000.html").as_uri()):
        page, errors = _open(browser, url)
        assert EVIL in page.inner_text("h1")
        assert page.evaluate("window.pwned") is None
        assert errors == []


NAME = "b<img src=x onerror=window.pwned=1>"  # A model file name with markup (no slash: it is one name).


@pytest.fixture(scope="module")
def compare_site(mnist, tmp_path_factory):
    """compare_seeds on two tiny models (one named with markup), with the OIP comparison of 3 matched maps."""
    from jaxoip.cli import compare_seeds
    from jaxoip.models.checkpoint import save_model
    from jaxoip.models.train import TrainConfig, train

    small = dataclasses.replace(mnist, train_images=mnist.train_images[:256], train_labels=mnist.train_labels[:256])
    tmp = tmp_path_factory.mktemp("compare")
    paths = [
        save_model(tmp / name, train(TrainConfig(epochs=1, seed=s), data=small, progress=False))
        for s, name in ((0, "a"), (1, NAME))
    ]
    out = tmp / "out"
    argv = [
        "--models", *map(str, paths), "--layers", "Conv2D_1,Conv2D_3", "--test-subset", "60", "--blocks", "7",
        "--max-samples", "3000", "--bootstrap", "6", "--oip-steps", "3", "--oip-restarts", "2", "--oip-maps", "3",
        "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert cli.run(compare_seeds.main, argv) == 0
    return out


def test_compare_site_files_are_listed_in_the_marker(compare_site):
    import json

    marker = json.loads((compare_site / ".jaxoip.json").read_text())
    written = {p.relative_to(compare_site).as_posix() for p in (compare_site / "site").rglob("*") if p.is_file()}
    assert "site/pair_0_1.html" in written and written <= set(marker["tree"])
    assert {"index.html", "site", "report.md"} <= set(marker["files"])


def test_compare_site_in_the_browser(browser, compare_site, tmp_path):
    page, errors = _open(browser, (compare_site / "index.html").as_uri())
    text = page.inner_text("body")
    assert "Conv2D_1" in text and "Conv2D_3" in text and "matched_corr" in text and "same features?" in text
    assert NAME in text and page.evaluate("window.pwned") is None
    imgs = _images(page)
    assert len(imgs) >= 3 and all(ok and w > 0 for _, ok, w in imgs), imgs
    _not_blank(page, tmp_path / "compare.png")
    page.click("a[href='site/pair_0_1.html']")
    page.wait_for_load_state("load")
    assert page.url.endswith("site/pair_0_1.html")
    rows = page.locator("#pairs tr").count() - 1
    assert rows == 3
    imgs = _images(page)
    # Per matched map both OIPs, and both maps' exemplars unless dead on the data.
    assert len(imgs) >= 2 * rows and all(ok and w > 0 for _, ok, w in imgs), imgs
    assert sum("exemplars" in s for s, _, _ in imgs) + page.inner_text("#pairs").count("dead on data") == 2 * rows
    assert NAME in page.inner_text("h1") and page.evaluate("window.pwned") is None
    _not_blank(page, tmp_path / "pair.png")
    assert errors == []


@pytest.fixture(scope="module")
def microscope_site(tiny_checkpoint, mnist, tmp_path_factory):
    from jaxoip.cli import microscope

    out = tmp_path_factory.mktemp("microscope") / "out"
    argv = ["--model", str(tiny_checkpoint), "--layers", "Conv2D_1,Dense_2", "--out", str(out)]
    argv += ["--steps", "4", "--restarts", "2", "--precursor-starts", "4", "--exemplars", "1", "--no-progress"]
    assert cli.run(microscope.main, argv) == 0
    return out


def test_microscope_writes_a_site_per_layer(microscope_site):
    import json

    marker = json.loads((microscope_site / ".jaxoip.json").read_text())
    assert marker["status"] == "complete" and {"index.html", "Conv2D_1", "Dense_2", "site"} <= set(marker["files"])
    for layer, maps in (("Conv2D_1", 32), ("Dense_2", 10)):
        assert len(list((microscope_site / layer / "site").glob("map*.html"))) == maps
        assert (microscope_site / layer / "maps.csv").is_file()
    assert "Exemplars" in (microscope_site / "Conv2D_1" / "site" / "map000.html").read_text()


def test_microscope_site_in_the_browser(browser, microscope_site, tmp_path):
    page, errors = _open(browser, (microscope_site / "index.html").as_uri())
    imgs = _images(page)
    assert len(imgs) == 16 + 10 and all(ok and w > 0 for _, ok, w in imgs), imgs
    _not_blank(page, tmp_path / "microscope.png")
    page.click("h2 >> text=Dense_2")
    page.wait_for_load_state("load")
    assert page.url.endswith("Dense_2/index.html") and "Dense_2" in page.inner_text("h1")
    imgs = _images(page)
    assert len(imgs) == 10 and all(ok and w > 0 for _, ok, w in imgs), imgs
    assert errors == []


def test_a_colour_map_page_of_many_facets_stays_short(browser, colour_scan, tmp_path):
    """8 one-start colour facets took one tall block each (about 8 image heights); now they share a row, the
    facets beyond the first few folded under a line that opens to show them."""
    from jaxoip.site.scan_site import TILE

    write_scan_site(colour_scan, tmp_path)
    page, errors = _open(browser, (tmp_path / "site" / "map000.html").as_uri())
    tile = colour_scan.best_images.shape[1] * TILE
    section = page.evaluate(
        """() => {
          const heads = Array.from(document.querySelectorAll('h2'));
          const top = h => h.getBoundingClientRect().top;
          const i = heads.findIndex(h => h.textContent.startsWith('Starts, grouped by facet'));
          return top(heads[i + 1]) - top(heads[i]);
        }"""
    )
    assert section < 5 * tile, section  # Two image rows (plain, enhanced), captions, the note and the fold.
    folded = page.locator("details.more figure.facet")
    n = len(colour_scan.facets()[0].representatives)
    assert page.locator("figure.facet").count() == n and 0 < folded.count() < n  # Every facet on the page.
    assert not folded.first.is_visible()
    page.click("details.more summary")
    assert folded.first.is_visible() and folded.last.is_visible()
    imgs = _images(page)
    assert all(ok and w > 0 for _, ok, w in imgs), imgs
    _not_blank(page, tmp_path / "colour_map.png")
    assert errors == []
