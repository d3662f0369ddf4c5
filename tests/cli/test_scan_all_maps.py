import json

import numpy as np
import pandas as pd
import pytest

from jaxoip import cli
from jaxoip.cli import scan_all_maps
from jaxoip.errors import JaxoipError
from jaxoip.oip.scan import scan_maps
from jaxoip.oip.search import OIPConfig

ARGS = ["--steps", "12", "--restarts", "2", "--precursor-starts", "8", "--no-progress"]


@pytest.fixture(scope="module")
def scan_out(tiny_checkpoint, mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("scan") / "out"
    rc = cli.run(scan_all_maps.main, ["--model", str(tiny_checkpoint), "--maps", "0-2,7", "--out", str(out), *ARGS])
    assert rc == 0
    return out


def test_outputs_exist_and_parse(scan_out):
    names = {p.name for p in scan_out.iterdir()}
    assert {"gallery.png", "maps.csv", "maps.json", "summary.json", "oips.npz", "two_choice.npz"} <= names
    # The folder's record of a complete run lists the new file too (what --overwrite may remove).
    assert "two_choice.npz" in json.loads((scan_out / ".jaxoip.json").read_text())["files"]
    assert {f"snapshots_map{m:03d}.png" for m in (0, 1, 2, 7)} <= names
    table = pd.read_csv(scan_out / "maps.csv")
    assert table["map"].tolist() == [0, 1, 2, 7]
    for col in (
        "data_mean",
        "data_max",
        "pre_fine_frac",
        "pre_study_max",
        "recipe",
        "best_objective",
        "mean_objective",
        "std_objective",
        "converged_step",
        "frac_stayed_zero",
        "found",
        "silent_on_noise",
        "dead_on_data",
        "out_of_range_frac",
        "superstimulus",
        "superstimulus_raw",
        "selectivity_rank",
        "selectivity_ratio",
        "stability",
        "two_choice_oip",
        "two_choice_exemplars",
        "two_choice_oip_minmax",
        "two_choice_exemplars_minmax",
        "two_choice_oip_lo",
        "two_choice_oip_hi",
        "two_choice_exemplars_minmax_lo",
        "two_choice_exemplars_minmax_hi",
    ):
        assert col in table, col
    rows = json.loads((scan_out / "maps.json").read_text())
    assert len(rows) == 4
    # Issue 16: maps dead on data have no superstimulus: empty in the CSV, null in the JSON.
    dead = table["dead_on_data"].to_numpy()
    assert table["superstimulus"][dead].isna().all() and table["superstimulus"][~dead].notna().all()
    assert all(r["superstimulus"] is None for r, d in zip(rows, dead) if d)
    summary = json.loads((scan_out / "summary.json").read_text())
    assert summary["quality"]["two_choice"]["chance"] == 0.5
    assert summary["maps"] == 4 and summary["restarts"] == 2 and summary["steps"] == 12
    arrays = np.load(scan_out / "oips.npz")
    assert arrays["best_images"].shape == (4, 28, 28, 1)
    assert arrays["best_pixels"].shape == (4, 28, 28, 1)
    np.testing.assert_allclose(arrays["best_objective"], table["best_objective"], rtol=1e-5)
    # Issue 26: the minimizing OIPs (min(9, restarts) per map) and every two-choice trial are saved.
    assert arrays["min_images"].shape == (4, 2, 28, 28, 1) and arrays["min_objective"].shape == (4, 2)
    trials = np.load(scan_out / "two_choice.npz")
    pairs = summary["quality"]["two_choice"]["pairs_per_map"]
    assert trials["strong"].shape == trials["correct_oip"].shape == (4, pairs)
    np.testing.assert_allclose(trials["correct_exemplars"].mean(axis=1), table["two_choice_exemplars"], rtol=1e-12)


@pytest.mark.parametrize("pixel_range", ["clip", "sigmoid"])
def test_pixel_range_keeps_oips_in_range(tiny_checkpoint, mnist, tmp_path, pixel_range):
    """--pixel-range clip and sigmoid give OIPs whose pixels all lie in [0, 255], with Fourier images too."""
    out = tmp_path / "out"
    argv = ["--model", str(tiny_checkpoint), "--maps", "0-2", "--param", "fourier", "--out", str(out), *ARGS]
    assert cli.run(scan_all_maps.main, [*argv, "--pixel-range", pixel_range]) == 0
    pixels = np.load(out / "oips.npz")["best_pixels"]
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3, (pixels.min(), pixels.max())
    table = pd.read_csv(out / "maps.csv")
    assert (table["out_of_range_frac"] == 0).all()
    np.testing.assert_allclose(table["superstimulus"], table["superstimulus_raw"], rtol=1e-4)
    assert json.loads((out / "summary.json").read_text())["oip_config"]["pixel_range"] == pixel_range


def test_scan_api_matches_command(tiny_trained, mnist, scan_out):
    res = scan_maps(
        tiny_trained, "Conv2D_3", [0, 1, 2, 7], restarts=2, config=OIPConfig(steps=12), precursor_starts=8, data=mnist
    )
    table = res.table()
    np.testing.assert_allclose(table["best_objective"], pd.read_csv(scan_out / "maps.csv")["best_objective"], rtol=1e-4)
    assert res.images.shape == (4, 2, 28, 28, 1) and res.traces.shape == (4, 2, 12)
    # A found map's best start has a positive objective; the data columns come from the test set.
    assert ((table["best_objective"] > 0) == table["found"]).all()
    assert (table["data_max"] >= table["data_mean"]).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "Conv2D_7"], "unknown map or vector layer 'Conv2D_7'"),
        (["--layer", "Dense_2", "--maps", "4", "--target", "4-9"], "either --maps or --target"),
        (["--layer", "Dense_1", "--node", "0,0"], "not to the vector layer"),
        (["--layer", "Dense_2", "--target", "4-19"], "dense node 19 out of range"),
        (["--layer", "Dense_2", "--target", "4*"], "cannot read target term"),
        (["--tv", "-1"], "tv must be at least 0"),
        (["--maps", "0,200"], "map index 200 out of range"),
        (["--node", "5,5"], "outside the 3x3 maps"),
        (["--recipes", "fine,pink"], "unknown noise recipe 'pink'"),
        (["--restarts", "0"], "restarts must be at least 1"),
        (["--observer-model", "no/such/observer"], "no checkpoint at"),
    ],
)
def test_bad_arguments_one_line_no_output(tiny_checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc = cli.run(scan_all_maps.main, ["--model", str(tiny_checkpoint), "--out", str(out), *ARGS, *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_model_that_does_not_load(tmp_path, capsys):
    rc = cli.run(scan_all_maps.main, ["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_help():
    with pytest.raises(SystemExit) as e:
        scan_all_maps.main(["--help"])
    assert e.value.code == 0


def test_runs_without_mnist(tmp_path, monkeypatch, capsys):
    """A fresh machine: the shipped model, no data folder, no tensorflow-datasets; the search still runs."""
    from jaxoip.data import mnist as data_lib
    from jaxoip.errors import DataError

    def no_tfds():
        raise DataError("no MNIST data")

    monkeypatch.delenv(data_lib.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(data_lib, "_load_tfds", no_tfds)
    out = tmp_path / "out"
    rc = cli.run(scan_all_maps.main, ["--maps", "0-1", "--out", str(out), *ARGS])
    err = capsys.readouterr().err.strip()
    assert rc == 0 and err.count("note:") == 1 and "--data-dir" in err and data_lib.DATA_DIR_ENV in err
    table = pd.read_csv(out / "maps.csv")
    assert table["map"].tolist() == [0, 1] and "data_mean" not in table and "dead_on_data" not in table
    assert np.isfinite(table["best_objective"]).all()


@pytest.mark.slow
def test_toolkit_options_recorded(tiny_checkpoint, mnist, tmp_path):
    """A weighted class target with the robust style, Fourier images and diversity, from the command line."""
    out = tmp_path / "out"
    rc = cli.run(
        scan_all_maps.main,
        [
            "--model",
            str(tiny_checkpoint),
            "--layer",
            "Dense_2",
            "--target",
            "4-9",
            "--target",
            "7",
            "--style",
            "robust",
            "--param",
            "fourier",
            "--diversity",
            "0.5",
            "--out",
            str(out),
            *ARGS,
        ],
    )
    assert rc == 0
    table = pd.read_csv(out / "maps.csv")
    assert table["target"].tolist() == ["4-9", "7"]
    assert set(table["method"]) <= {"direct", "woken", "none"}
    assert (table["facets"] >= 1).all() and "facet_sizes" in table
    summary = json.loads((out / "summary.json").read_text())
    cfg, objective = summary["oip_config"], summary["objective"]
    assert objective["weighted"] == [[[4, 1.0], [9, -1.0]], [[7, 1.0]]] and cfg["param"] == "fourier"
    assert cfg["jitter"] == 2.0 and cfg["diversity"] == 0.5 and objective["wake"] and objective["layer"] == "Dense_2"
    assert summary["options"]["style"] == "robust" and summary["options"]["facet_threshold"] == 0.5
    arrays = np.load(out / "oips.npz")
    assert arrays["woken"].shape == (2, 2) and arrays["facet_labels"].shape == (2, 2)


def test_help_documents_every_option_default(capsys):
    with pytest.raises(SystemExit):
        scan_all_maps.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in (
        "--style",
        "--wake",
        "--param",
        "--jitter",
        "--tv",
        "--l1",
        "--blur",
        "--diversity",
        "--facet-threshold",
        "--target",
        "--quantity",
        "--fourier-decay",
    ):
        assert option in text, option
    assert "(default: study)" in text and "(default: True)" in text  # --wake


@pytest.mark.slow
def test_facet_threshold_reaches_the_measures_and_write_scan_takes_exemplars(tiny_trained, mnist, tmp_path):
    from jaxoip.analysis.exemplars import find_exemplars
    from jaxoip.oip.scan import write_scan

    cfg = OIPConfig(steps=5)
    result = scan_maps(
        tiny_trained, "Conv2D_3", [0, 1], 3, cfg, precursor_starts=4, data=mnist, progress=False, facet_threshold=0.99
    )
    assert result.facet_threshold == 0.99
    # The two-choice OIP references are the facets at the scan's threshold: as many as the table says.
    assert result.table()["facets"].tolist() == [len(f.sizes) for f in result.facets()]
    ex = find_exemplars(tiny_trained, mnist, "Conv2D_3", k=2)
    out = write_scan(result, tmp_path / "scan", exemplars=ex)
    assert (out / "gallery.png").stat().st_size > 0
    with pytest.raises(JaxoipError, match="facet threshold"):
        scan_maps(tiny_trained, "Conv2D_3", [0], 2, cfg, data=mnist, progress=False, facet_threshold=2.0)
