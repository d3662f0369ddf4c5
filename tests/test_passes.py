"""The pass cache (`jaxoip.passes`): a pass over a data set read back is the pass's very result, and only
that pass's: other weights, images, layers or reductions miss; a damaged entry is recomputed."""

import json

import numpy as np
import pytest

from jaxoip import passes
from jaxoip.compiles import count_compiles
from jaxoip.models.cnn import batched_layer_map, init_model
from jaxoip.oip.precursor import MapMeansAndMaxima, MapObjectives


@pytest.fixture
def cache(tmp_path):
    passes.use_pass_cache(tmp_path / "passes")
    yield tmp_path / "passes"
    passes.use_pass_cache(None)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(40, 28, 28, 1)).astype(np.float32)


def _pass(model, images, layer="Conv2D_2", fn=None, cache=True):
    with count_compiles() as c:
        out = batched_layer_map(model, images, layer, fn or MapMeansAndMaxima(), batch_size=16, cache=cache)
    return out, c


def _same(a, b):
    return all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b, strict=True))


def test_a_pass_read_back_is_the_pass_bit_for_bit(cache, images):
    model = init_model(seed=0)
    first, c1 = _pass(model, images)
    second, c2 = _pass(model, images)
    assert c1.passes_read == 0 and c2.passes_read == 1 and c2.programs == 0  # Neither built nor loaded.
    assert _same(first, second) and len(list(cache.glob("*.npz"))) == 1
    uncached, c3 = _pass(model, images, cache=False)
    assert c3.passes_read == 0 and _same(first, uncached)


def test_only_the_same_program_on_the_same_inputs_is_read_back(cache, images):
    model, other = init_model(seed=0), init_model(seed=1)
    base, _ = _pass(model, images)
    changed = images.copy()
    changed[7, 3, 3, 0] += 1.0
    for case in (
        lambda: _pass(other, images),  # Other weights.
        lambda: _pass(model, changed),  # One pixel of one image.
        lambda: _pass(model, images, layer="Conv2D_3"),  # Another layer.
        lambda: _pass(model, images, fn=MapObjectives(None)),  # Another reduction.
    ):
        out, c = case()
        assert c.passes_read == 0
    assert len(list(cache.glob("*.npz"))) == 5
    again, c = _pass(model, images)
    assert c.passes_read == 1 and _same(base, again)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_entry_is_recomputed_and_replaced(cache, images, damage):
    model = init_model(seed=0)
    base, _ = _pass(model, images)
    (entry,) = cache.glob("*.npz")
    raw = bytearray(entry.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":  # A value's bits inside the stored arrays: the digest no longer fits.
        raw[len(raw) // 2] ^= 0x40
    else:
        raw = bytearray(b"not a cache entry")
    entry.write_bytes(bytes(raw))
    out, c = _pass(model, images)
    assert c.passes_read == 0 and _same(base, out)
    again, c = _pass(model, images)
    assert c.passes_read == 1 and _same(base, again)


def test_a_folder_that_cannot_be_written_leaves_the_pass_uncached(tmp_path, images):
    blocked = tmp_path / "a file"  # The cache's folder cannot be made there (even by root).
    blocked.write_text("the user's")
    passes.use_pass_cache(blocked / "passes")
    try:
        model = init_model(seed=0)
        first, _ = _pass(model, images)
        second, c = _pass(model, images)
    finally:
        passes.use_pass_cache(None)
    assert c.passes_read == 0 and _same(first, second) and blocked.read_text() == "the user's"


def test_a_scan_reads_its_data_pass_back_and_writes_the_same_files(tmp_path, mnist, monkeypatch):
    """The command: the second scan of a layer reads the test images' pass back (the console and summary.json
    say so), and its files equal the first scan's; `--no-cache` reads nothing."""
    from jaxoip.cli.scan_all_maps import main

    monkeypatch.setenv("JAXOIP_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["--maps", "0-1", "--restarts", "2", "--steps", "5", "--precursor-starts", "4", "--no-progress"]
    summaries = {}
    try:
        for name, extra in (("a", []), ("b", []), ("c", ["--no-cache"])):
            assert main([*argv, *extra, "--out", str(tmp_path / name)]) == 0
            summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())
    finally:
        passes.use_pass_cache(None)
    assert [summaries[n]["cached_passes"] for n in "abc"] == [0, 1, 0]
    for name in "bc":
        assert (tmp_path / name / "maps.csv").read_bytes() == (tmp_path / "a" / "maps.csv").read_bytes()
        a, b = np.load(tmp_path / "a" / "oips.npz"), np.load(tmp_path / name / "oips.npz")
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_passes_of_any_length_share_one_program_and_its_bits(images):
    """One program per batch shape: 120 images (8 batches) and 5 (one padded batch) build one program, and the 5
    images' values are the same bits in both passes."""
    model = init_model(seed=2)
    with count_compiles() as c:
        long = batched_layer_map(model, np.tile(images, (3, 1, 1, 1)), "Conv2D_3", MapMeansAndMaxima(), batch_size=15)
        short = batched_layer_map(model, images[:5], "Conv2D_3", MapMeansAndMaxima(), batch_size=15, pad=True)
    assert c.programs == 1
    assert all(np.array_equal(a[:5], b) for a, b in zip(long, short, strict=True))
