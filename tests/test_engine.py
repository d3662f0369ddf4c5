"""The numerics contract and the compiled engine: precision, determinism, compile counts, the cache."""

import json
import os
import subprocess
import sys

import jax
import matplotlib
import numpy as np
import pytest

import jaxoip
from jaxoip import numerics
from jaxoip.compiles import count_compiles
from jaxoip.errors import JaxoipError
from jaxoip.oip.search import OIPConfig, chunk_layout, search_oips


def _starts(n, seed=0):
    return jaxoip.initial_images(jaxoip.start_keys(seed, range(n), 1).reshape(-1), ["study"])


def test_unknown_precision_is_refused():
    with pytest.raises(JaxoipError, match="unknown precision"):
        OIPConfig(precision="fp8")
    with pytest.raises(JaxoipError, match="unknown precision"):
        jaxoip.TrainConfig(precision="double")


def test_matmul_follows_the_scope():
    x = jax.random.normal(jax.random.key(0), (4, 64))
    w = jax.random.normal(jax.random.key(1), (64, 8))
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)

    @jax.jit
    def highest(x, w):
        with numerics.precision_scope("highest"):
            return numerics.matmul(x, w)

    @jax.jit
    def bf16(x, w):
        with numerics.precision_scope("bf16"):
            return numerics.matmul(x, w)

    # True float32: error at float32 rounding of a 64-term sum (|terms| ~ 1).
    np.testing.assert_allclose(highest(x, w), exact, atol=1e-4)
    # bfloat16 inputs keep 8 bits of mantissa: errors of order 1e-2 on these sums, but not more.
    err = np.abs(np.asarray(bf16(x, w)) - exact).max()
    assert 1e-4 < err < 0.2
    assert bf16(x, w).dtype == np.float32
    assert numerics.current_precision() == "highest"  # The scope does not leak.


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_search_at_each_precision_is_finite_and_close(reference, precision):
    x0 = _starts(4)
    maps = [0, 1, 2, 3]
    ref = search_oips(reference.model, "Conv2D_3", maps, x0, OIPConfig(steps=5))
    low = search_oips(reference.model, "Conv2D_3", maps, x0, OIPConfig(steps=5, precision=precision))
    assert np.isfinite(low.images).all()
    # After 5 steps of size 0.01 the image has moved by at most 0.05 per pixel in any precision; the
    # precisions differ only in the direction of those steps, so the images agree to that bound.
    np.testing.assert_allclose(low.images, ref.images, atol=0.1)


def test_same_seed_same_bits(reference):
    kw = dict(map_indices=[3, 5], restarts=2, config=OIPConfig(steps=20), progress=False, seed=7)
    a = jaxoip.scan_maps(reference, "Conv2D_3", **kw)
    b = jaxoip.scan_maps(reference, "Conv2D_3", **kw)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.traces, b.traces)


def test_chunks_are_bucketed_to_powers_of_two():
    assert chunk_layout(5, None, 1) == (8, 1)
    assert chunk_layout(8, None, 1) == (8, 1)
    assert chunk_layout(9, 4, 1) == (4, 3)
    assert chunk_layout(100, 32, 1) == (32, 4)


def test_chunk_size_is_per_device_whatever_the_device_count():
    """Every device gets the same batch on 1 or 4 devices (XLA's CPU kernels block a batch by its size), so an
    image's bits do not depend on the device count; `fixed` keeps the batch for fewer images too."""
    assert chunk_layout(3, None, 4) == (16, 1)  # 4 images per device, as on one device.
    assert chunk_layout(3, None, 1) == (4, 1)
    assert chunk_layout(100, 8, 4) == (32, 4)
    assert chunk_layout(3, 8, 2, fixed=True) == (16, 1)
    assert chunk_layout(6, 4, 2, group=3) == (12, 1)  # A map's 3 starts stay on one device.


def test_similar_batch_sizes_share_one_program(reference):
    cfg = OIPConfig(steps=3)
    x5, x7, x6 = _starts(5), _starts(7, seed=1), _starts(6, seed=2)
    search_oips(reference.model, "Conv2D_3", [0] * 5, x5, cfg)
    with count_compiles() as c:
        search_oips(reference.model, "Conv2D_3", [1] * 7, x7, cfg)
        search_oips(reference.model, "Conv2D_3", [2] * 6, x6, cfg)
    assert c.programs == 0


def test_scan_compiles_few_programs_and_a_repeat_none(reference, mnist):
    """Issue 8: a scan of 8 maps x 2 starts x 50 steps with data, then its exemplars, builds 7 programs: the
    precursor's and the screened start images, one pass for the precursor, the screening, the test images and the
    best OIPs (issue 28: one program per batch shape and reduction), the search, the minimizing search, the
    two-choice observer, and `find_exemplars`' pass of the maxima alone."""
    jax.clear_caches()
    kw = dict(map_indices=range(8), restarts=2, config=OIPConfig(steps=50), data=mnist, progress=False)
    with count_compiles() as first:
        jaxoip.scan_maps(reference, "Conv2D_3", **kw)
        jaxoip.find_exemplars(reference, mnist, "Conv2D_3", k=3)
    # Programs built in this process, compiled or loaded from a persistent cache an earlier test enabled.
    assert first.programs == 7, first
    with count_compiles() as second:
        jaxoip.scan_maps(reference, "Conv2D_3", **kw)
        jaxoip.find_exemplars(reference, mnist, "Conv2D_3", k=3)
    assert second.programs == 0, second


def test_evaluate_model_compiles_once(reference, mnist):
    jaxoip.evaluate_model(reference, mnist)
    with count_compiles() as c:
        a = jaxoip.evaluate_model(reference, mnist)
        b = jaxoip.evaluate_model(reference, mnist)
    assert c.programs == 0
    assert a == b


def test_importing_the_figures_keeps_the_matplotlib_backend():
    figures = "jaxoip.figures, jaxoip.analysis.figures, jaxoip.models.figures, jaxoip.oip.figures, jaxoip.seeds.figures"
    code = f"import matplotlib; b = matplotlib.get_backend(); import {figures}; print(b == matplotlib.get_backend())"
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"
    assert "pyplot" not in sys.modules or matplotlib.get_backend()  # The library never imports pyplot itself.


def _scan_cmd(out, cache):
    env = {**os.environ, "JAXOIP_CACHE_DIR": str(cache)}
    cmd = [
        sys.executable,
        "-m",
        "jaxoip",
        "scan_all_maps",
        "--maps",
        "0-3",
        "--restarts",
        "2",
        "--steps",
        "10",
        "--exemplars",
        "0",
        "--precursor-starts",
        "8",
        "--screen",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_second_run_loads_its_programs_from_the_cache(tmp_path, mnist):
    first = _scan_cmd(tmp_path / "a", tmp_path / "cache")
    second = _scan_cmd(tmp_path / "b", tmp_path / "cache")
    assert first["precision"] == "highest" and first["compilation_cache"] == str(tmp_path / "cache")
    assert first["compiled_programs"] >= 1
    # The second run reads the test images' pass back (jaxoip.passes): that program is neither built nor loaded.
    assert first["cached_passes"] == 0 and second["cached_passes"] == 1
    assert second["compiled_programs"] == 0 and second["cached_programs"] + 1 >= first["compiled_programs"]
    a, b = np.load(tmp_path / "a" / "oips.npz"), np.load(tmp_path / "b" / "oips.npz")
    np.testing.assert_array_equal(a["best_images"], b["best_images"])  # The cache changes nothing.


def test_commands_ask_xla_for_deterministic_gpu_kernels():
    code = "import os, jaxoip.cli; print(os.environ.get('XLA_FLAGS', ''))"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "--xla_gpu_deterministic_ops=true" in out.stdout


@pytest.mark.parametrize("command", ["train", "activations", "scan_all_maps", "compare_seeds", "microscope"])
@pytest.mark.slow
def test_commands_set_the_flag_before_any_backend_starts(command):
    """`python -m jaxoip <command>` imports the command (and JAX) after `jaxoip.cli`; XLA reads its flags when
    the first backend starts, so the flag counts as long as no backend has started when the command sets it."""
    code = (
        "import os, runpy, sys\nfrom jax._src import xla_bridge\n"
        f"sys.argv = ['jaxoip', {command!r}, '--help']\n"
        "try:\n"
        "    runpy.run_module('jaxoip', run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n    pass\n"
        "print(os.environ.get('XLA_FLAGS', ''), bool(xla_bridge._backends))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    flags, started = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert "--xla_gpu_deterministic_ops=true" in flags and started == "False", out.stderr
