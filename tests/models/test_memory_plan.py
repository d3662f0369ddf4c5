"""Every option that sizes an array is checked against memory before any work (issue 20)."""

import pytest

from jaxoip import cli
from jaxoip.errors import OutOfMemoryError, OutputError
from jaxoip.models.cnn import ModelConfig


@pytest.fixture
def eight_gib(monkeypatch):
    """Whatever the test machine has: 8 GiB on the device and on the host."""
    monkeypatch.setattr("jaxoip.models.memory.available_bytes", lambda: 8 * 2**30)
    monkeypatch.setattr("jaxoip.models.memory.host_available_bytes", lambda: 8 * 2**30)


def _refused(capsys, main, argv, *parts):
    assert cli.run(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for part in parts:
        assert part in err, err
    return err


@pytest.mark.parametrize(
    "argv, parts",
    [
        (
            ["--precursor-starts", "100000000"],
            ["--precursor-starts 100000000", "the precursor images", "available: 8.6 GB"],
        ),
        (
            ["--screen", "10000000"],
            ["--screen 10000000", "the candidate images", "x 10000000 screen x 28x28x1x4 bytes"],
        ),
        (["--restarts", "100000000"], ["--restarts 100000000", "TB"]),
        (["--steps", "1000000", "--restarts", "100000", "--screen", "1"], ["--steps 1000000", "the objective traces"]),
    ],
)
def test_scan_command_checks_every_array(argv, parts, capsys, tmp_path, eight_gib):
    from jaxoip.cli import scan_all_maps

    _refused(capsys, scan_all_maps.main, argv + ["--out", str(tmp_path / "o")], *parts)
    assert not (tmp_path / "o").exists()


def test_scan_library_checks_before_work(tiny_trained, eight_gib):
    from jaxoip.oip.scan import scan_maps

    with pytest.raises(OutOfMemoryError, match="--screen 10000000 needs .* for the candidate images"):
        scan_maps(tiny_trained, "Conv2D_1", screen=10_000_000, progress=False)


def test_default_runs_pass_the_check(reference, eight_gib):
    from jaxoip.models.memory import check_arrays
    from jaxoip.oip.plan import plan_scan
    from jaxoip.seeds.compare import compare_arrays
    from jaxoip.seeds.config import CompareConfig

    plan = plan_scan(reference)
    assert len(plan.maps) == 128 and plan.restarts >= 8
    check_arrays(compare_arrays(CompareConfig(), ModelConfig(), 10_000, 5))


@pytest.mark.parametrize(
    "argv, parts",
    [
        (["--bootstrap", "1000000000"], ["--bootstrap 1000000000", "bootstrap"]),
        (["--seeds", "100000"], ["100000 models", "correlation matrices"]),
        (["--oip-restarts", "100000000"], ["--oip-restarts 100000000", "candidate images"]),
    ],
)
def test_compare_command_checks_every_array(argv, parts, capsys, tmp_path, eight_gib, mnist):
    from jaxoip.cli import compare_seeds

    _refused(capsys, compare_seeds.main, argv + ["--out", str(tmp_path / "o")], *parts)
    assert not (tmp_path / "o").exists()


def test_exemplar_figure_checked(capsys, tmp_path, eight_gib, mnist):
    from jaxoip.analysis.figures import check_exemplar_figure
    from jaxoip.cli import activations

    _refused(
        capsys, activations.main, ["--exemplars", "100000000", "--out", str(tmp_path / "o")], "--exemplars 100000000"
    )
    assert not (tmp_path / "o").exists()
    with pytest.raises(OutOfMemoryError, match="--exemplars 2000 needs .* for the exemplar figure"):
        check_exemplar_figure(ModelConfig(), "Conv2D_3", 2000, 10_000)
    with pytest.raises(OutputError, match="more than matplotlib draws"):
        check_exemplar_figure(ModelConfig(), "Conv2D_3", 10_000, 10_000)
    check_exemplar_figure(ModelConfig(), "Conv2D_3", 3, 10_000)


def test_format_bytes():
    from jaxoip.models.memory import format_bytes

    assert format_bytes(2.4e12) == "2.4 TB"
    assert format_bytes(23e9) == "23 GB"
    assert format_bytes(512) == "512 B"


@pytest.mark.parametrize("command", ["scan_all_maps", "train", "activations", "compare_seeds"])
def test_a_backend_jax_cannot_start_is_named(command, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "JAX_PLATFORMS": "bogus"}
    argv = [sys.executable, "-m", "jaxoip", command, "--out", str(tmp_path / "o")]
    argv += ["--confusion"] if command == "activations" else []
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: JAX cannot start a backend (JAX_PLATFORMS=bogus): "), p.stderr
    assert p.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_out_of_memory_names_the_commands_options(capsys):
    def main(argv):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 59000000000 bytes.")

    err = _refused(capsys, main, [], "out of memory")
    assert "use a smaller batch or chunk size" in err  # A function of no command's module.
    assert cli.run(main, [], memory_options="--restarts or --screen") == 2
    err = capsys.readouterr().err
    assert "use a smaller --restarts or --screen" in err and "--batch-size" not in err
    # However a command is started (console script, python -m jaxoip <command>, python -m jaxoip.<command>),
    # its own options are named: they come from its module.
    for module, options in [
        ("jaxoip.cli.scan_all_maps", "--restarts, --screen, --precursor-starts or --chunk-size"),
        ("jaxoip.cli.activations", "--exemplars"),
        ("jaxoip.cli.train", "--batch-size"),
    ]:
        __import__(module)
        main.__module__ = module
        assert cli.run(main, []) == 2
        assert f"use a smaller {options}" in capsys.readouterr().err


def test_divergence_suggests_epsilon_only_with_finite_inputs_and_weights():
    import numpy as np

    from jaxoip.errors import DivergenceError, JaxoipError
    from jaxoip.oip.config import check_terms
    from jaxoip.oip.search import check_finite

    res = {
        "images": np.full((2, 28, 28, 1), np.nan, np.float32),
        "objective": np.zeros(2, np.float32),
        # Finite at the start images (trace step 0 is their objective), then blown up by the steps.
        "traces": np.concatenate([np.ones((2, 1)), np.full((2, 4), np.nan)], axis=1).astype(np.float32),
    }
    with pytest.raises(DivergenceError, match="try a smaller epsilon"):
        check_finite(res, {"w": np.ones(3, np.float32)})
    with pytest.raises(DivergenceError, match="non-finite weights") as e:
        check_finite(res, {"w": np.array([1.0, np.nan], np.float32)})
    assert "epsilon" not in str(e.value)
    with pytest.raises(JaxoipError, match="weight of unit 4"):  # Refused before any search.
        check_terms([(4, float("inf"))])
