"""`jaxoip.run_scan` and `run_microscope`, the main job as a library call: the command's folder from Python, the
output folder's rules, and microscope over two processes."""

import filecmp
import json
import os

import numpy as np
import pytest

import jaxoip
from jaxoip import cli
from jaxoip.data import mnist as data_lib
from jaxoip.errors import JaxoipError, OutputError

TINY = {"steps": 8, "restarts": 2, "precursor_starts": 8, "screen": 2}


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_run_scan_writes_the_commands_folder(tiny_checkpoint, mnist, tmp_path):
    """run_scan with a plain path: the files of `scan_all_maps` with the same settings, maps.csv and oips.npz
    bit for bit; the folder is complete (its marker) and refuses a second run without --overwrite's rule."""
    from jaxoip.cli import scan_all_maps
    from jaxoip.oip.config import OIPConfig

    argv = ["--model", str(tiny_checkpoint), "--maps", "0-3", "--exemplars", "2", "--no-progress"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert cli.run(scan_all_maps.main, [*argv, "--out", str(tmp_path / "command")]) == 0

    trained = jaxoip.load_model(tiny_checkpoint)
    steps, restarts, precursor_starts, screen = TINY.values()
    plan = jaxoip.plan_scan(
        trained,
        maps=range(4),
        restarts=restarts,
        config=OIPConfig(steps=steps),
        precursor_starts=precursor_starts,
        screen=screen,
        exemplars=2,
    )
    run = jaxoip.run_scan(plan, mnist, tmp_path / "python", snapshot_maps=range(4), progress=False)
    a, b = tmp_path / "command", tmp_path / "python"
    assert run.path == b.absolute() and not run.resumed and run.result.exemplars is not None
    assert _files(a) == _files(b) and (b / "index.html").is_file()
    assert filecmp.cmp(a / "maps.csv", b / "maps.csv", shallow=False)
    with np.load(a / "oips.npz") as za, np.load(b / "oips.npz") as zb:
        assert za.files == zb.files
        for key in za.files:
            assert np.array_equal(za[key], zb[key]), key
    summary = json.loads((b / "summary.json").read_text())
    assert summary["compiled_programs"] == run.compiles.compiled and summary["processes"] == 1
    # How the search's chunk was sized, from XLA's analysis of the program the search ran.
    memory = summary["search_memory"]
    assert memory["chunk"] == plan.chunk and memory["chunks_tried"] == [plan.chunk]
    assert 0 < memory["needed_bytes"] <= memory["available_bytes"] and memory["program"]["temp"] > 0
    assert json.loads((b / ".jaxoip.json").read_text())["status"] == "complete"
    with pytest.raises(OutputError, match="--overwrite"):
        jaxoip.run_scan(plan, mnist, b, progress=False)


def test_run_scan_refuses_a_users_folder_before_any_work(reference, tmp_path, monkeypatch):
    """A non-empty folder jaxoip did not write is refused in one line, untouched, before the scan starts; so is
    an `out` that is no folder."""
    from jaxoip import jobs

    plan = jaxoip.plan_scan(reference, maps=[0], restarts=1, precursor_starts=4, screen=1, quality=None)
    monkeypatch.setattr(jobs, "scan_layer", lambda *a, **k: pytest.fail("scanned"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt|not empty|did not write"):
        jaxoip.run_scan(plan, None, mine, progress=False)
    assert _files(mine) == ["notes.txt"] and (mine / "notes.txt").read_text() == "mine"
    for out, message in ((None, "folder path"), (3, "folder path or a prepared OutputDir")):
        with pytest.raises(JaxoipError, match=message):
            jaxoip.run_scan(plan, None, out, progress=False)
    with pytest.raises(JaxoipError, match="distinct layers"):
        jaxoip.run_microscope([plan, plan], None, tmp_path / "twice", progress=False)
    assert not (tmp_path / "twice").exists()


@pytest.mark.slow
def test_microscope_over_two_processes_gives_the_bits_of_one(tiny_checkpoint, mnist, tmp_path):
    """microscope on 2 processes x 1 device: every layer's oips.npz equals one process's bit for bit, only
    process 0 writes and prints, and process 1 waits for process 0's files and site between the layers
    longer than a short --distributed-timeout (that wait is not the run's timeout)."""
    from test_distributed import _free_port, _start

    argv = ["--model", str(tiny_checkpoint), "--layers", "Conv2D_3,Dense_2", "--steps", "4", "--restarts", "2"]
    argv += ["--precursor-starts", "4", "--exemplars", "1", "--no-progress", "--distributed-timeout", "5"]
    port, data = _free_port(), {"JAXOIP_DATA_DIR": os.environ[data_lib.DATA_DIR_ENV]}
    join = ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
    ids = [[*join, "--process-id", str(i), "--out", f"out{i}"] for i in range(2)]
    procs = [_start([*argv, *i], 1, tmp_path / "cache", tmp_path, data, "microscope") for i in ids]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    out = tmp_path / "out0"
    assert not (tmp_path / "out1").exists() and results[1][0] == ""
    assert f"wrote {out}/index.html" in results[0][0] and "Dense_2: OIP found" in results[0][0]
    assert json.loads((out / ".jaxoip.json").read_text())["status"] == "complete"
    assert 'href="Conv2D_3/index.html"' in (out / "index.html").read_text()
    one = tmp_path / "one"
    from jaxoip.cli import microscope

    assert cli.run(microscope.main, [*argv, "--out", str(one)]) == 0
    for layer in ("Conv2D_3", "Dense_2"):
        assert json.loads((out / layer / "summary.json").read_text())["processes"] == 2
        assert filecmp.cmp(out / layer / "maps.csv", one / layer / "maps.csv", shallow=False), layer
        with np.load(out / layer / "oips.npz") as two, np.load(one / layer / "oips.npz") as single:
            for key in single.files:
                assert np.array_equal(two[key], single[key]), (layer, key)


def test_microscope_scans_a_conv_bn_relu_block_at_its_activation():
    from jaxoip.data.mnist import Standardization
    from jaxoip.jobs import microscope_layers
    from jaxoip.models.cnn import LayerSpec, ModelConfig, TrainedModel, init_model

    chain = ModelConfig(
        layers=(
            LayerSpec("conv1", "conv", 4, 3),  # Linear: its batch norm and ReLU follow as layers.
            LayerSpec("bn1", "batchnorm"),
            LayerSpec("relu1", "activation", activation="relu"),
            LayerSpec("pool1", "pool", 2),
            LayerSpec("conv2", "conv", 4, 3, "relu"),  # Carries its ReLU: the block is the conv itself.
            LayerSpec("flat", "flatten"),
            LayerSpec("logits", "dense", 10, activation="softmax"),
        )
    )
    trained = TrainedModel(init_model(chain, 0), Standardization(0.0, 1.0))
    assert microscope_layers(trained) == ["relu1", "conv2", "logits"]
    from jaxoip.models.checkpoint import load_reference_model

    assert microscope_layers(load_reference_model()) == ["Conv2D_1", "Conv2D_2", "Conv2D_3", "Dense_2"]


def test_microscope_refuses_a_layer_name_that_is_no_folder_name(tmp_path):
    """A foreign model's layer names become folders: one that would leave `out` is refused before any work."""
    import dataclasses

    import pytest

    from jaxoip.errors import JaxoipError
    from jaxoip.jobs import run_microscope
    from jaxoip.models.checkpoint import load_reference_model
    from jaxoip.oip.plan import plan_scan

    plan = plan_scan(load_reference_model(), "Conv2D_3", maps=[0], restarts=1, precursor_starts=1, screen=1)
    for name in ("../outside", ".jaxoip-partial", ".."):
        layer = dataclasses.replace(plan.layer, name=name)
        odd = dataclasses.replace(plan, objective=dataclasses.replace(plan.objective, layer=layer))
        with pytest.raises(JaxoipError, match="cannot name a folder"):
            run_microscope([odd], None, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "outside").exists()
