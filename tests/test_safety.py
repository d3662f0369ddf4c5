"""Issue 9: output folders never destroy user files, bad values are refused, killed runs resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jaxoip import cli, jobs
from jaxoip._io import LOCK, MARKER, PARTIAL, TMP_PREFIX, prepare_output, read_marker
from jaxoip.cli import train as train_cmd
from jaxoip.data.mnist import Standardization, load_mnist
from jaxoip.errors import (
    CheckpointError,
    DataError,
    DivergenceError,
    JaxoipError,
    LayerError,
    OutOfMemoryError,
    OutputError,
)
from jaxoip.models import train as train_lib
from jaxoip.models.checkpoint import load_model, params_checksum
from jaxoip.models.cnn import ModelConfig, TrainedModel, init_model
from jaxoip.models.train import TrainConfig
from jaxoip.oip import groups as search_groups
from jaxoip.oip import scan
from jaxoip.oip.search import OIPConfig, check_finite, search_oips
from jaxoip.seeds.compare import CompareConfig


def _one_line_exit_2(capsys, main, argv, message):
    assert cli.run(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message in err, err
    return err


# --- Output folders ------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_npz(tmp_path_factory):
    """`--data` of 200 random 28x28 images: the train command's checks hold with or without MNIST."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.npz"
    x = np.random.default_rng(0).integers(0, 256, (200, 28, 28), np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(200) % 10, x_test=x[:20], y_test=np.arange(20) % 10)
    return ["--data", str(path)]


def _write(out, **files):
    for name, text in files.items():
        (out.staging / name).write_text(text)


def test_user_folder_is_refused_and_untouched(tmp_path, capsys, tiny_npz):
    (tmp_path / "notes.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["--out", str(tmp_path), "--epochs", "1", *tiny_npz]
    _one_line_exit_2(capsys, train_cmd.main, argv, "did not write (notes.txt)")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with pytest.raises(OutputError, match="did not write"):
        with prepare_output(tmp_path, "x", {}, overwrite=True):
            pass
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_current_directory_with_user_files_is_refused(tmp_path, monkeypatch, capsys, tiny_npz):
    (tmp_path / "project.py").write_text("code")
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2(capsys, train_cmd.main, ["--out", ".", "--epochs", "1", *tiny_npz], "did not write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project.py"]


def test_a_file_is_refused(tmp_path, capsys, tiny_npz):
    f = tmp_path / "result"
    f.write_text("data")
    _one_line_exit_2(capsys, train_cmd.main, ["--out", str(f), *tiny_npz], "is a file")
    assert f.read_text() == "data"


def test_complete_folder_needs_overwrite_which_replaces_only_jaxoip_files(tmp_path):
    out_dir = tmp_path / "out"
    with prepare_output(out_dir, "x", {"a": 1}) as out:
        _write(out, **{"a.txt": "1", "b.txt": "1"})
    marker = read_marker(out_dir)
    assert marker["status"] == "complete" and marker["files"] == ["a.txt", "b.txt"] and marker["config"] == {"a": 1}
    with pytest.raises(OutputError, match="--overwrite"):
        with prepare_output(out_dir, "x", {"a": 1}):
            pass
    (out_dir / "mine.txt").write_text("user")  # Added by the user after the run.
    with prepare_output(out_dir, "x", {"a": 2}, overwrite=True) as out:
        _write(out, **{"a.txt": "2"})
    assert (out_dir / "a.txt").read_text() == "2" and not (out_dir / "b.txt").exists()
    assert (out_dir / "mine.txt").read_text() == "user"
    assert read_marker(out_dir)["files"] == ["a.txt"]


def test_failed_run_in_a_new_folder_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with prepare_output(tmp_path / "new", "x", {}) as out:
            _write(out, **{"a.txt": "1"})
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_result(tmp_path):
    with prepare_output(tmp_path / "o", "x", {}) as out:
        _write(out, **{"a.txt": "old"})
    with pytest.raises(RuntimeError):
        with prepare_output(tmp_path / "o", "x", {}, overwrite=True) as out:
            _write(out, **{"a.txt": "new"})
            raise RuntimeError("boom")
    assert (tmp_path / "o" / "a.txt").read_text() == "old"
    assert not list((tmp_path / "o").glob(TMP_PREFIX + "*"))


def test_second_writer_is_locked_out(tmp_path):
    with prepare_output(tmp_path / "o", "x", {}):
        for resume in (True, False):
            with pytest.raises(OutputError, match=f"another jaxoip run \\(pid {os.getpid()}\\)"):
                with prepare_output(tmp_path / "o", "x", {}, resume=resume):
                    pass


def test_lock_of_another_process(tmp_path):
    code = (
        "import sys, time; from jaxoip._io import prepare_output\n"
        f"with prepare_output({str(tmp_path / 'o')!r}, 'x', {{}}):\n"
        "    print('locked', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        for resume in (True, False):  # A live run is named, whatever the flags.
            with pytest.raises(OutputError, match=f"another jaxoip run \\(pid {holder.pid}\\)"):
                with prepare_output(tmp_path / "o", "x", {}, resume=resume):
                    pass
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its holder: the interrupted run can now be resumed.
    with prepare_output(tmp_path / "o", "x", {}, resume=True) as out:
        _write(out, **{"a.txt": "1"})
    assert read_marker(tmp_path / "o")["status"] == "complete"


def test_resume_needs_the_same_settings_and_cleans_dead_temporary_folders(tmp_path):
    out_dir = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        with prepare_output(out_dir, "x", {"steps": 5}) as out:
            out.partial.mkdir()
            (out.partial / "work").write_text("done")
            raise KeyboardInterrupt
    stale = out_dir / f"{TMP_PREFIX}999999999"
    stale.mkdir()
    with pytest.raises(OutputError, match="--resume to finish it"):
        with prepare_output(out_dir, "x", {"steps": 5}):
            pass
    with pytest.raises(OutputError, match="other settings \\(steps: 5 then, 6 now"):
        with prepare_output(out_dir, "x", {"steps": 6}, resume=True):
            pass
    with prepare_output(out_dir, "x", {"steps": 5}, resume=True) as out:
        assert out.resumed and (out.partial / "work").read_text() == "done"
        assert not stale.exists()
    assert not (out_dir / PARTIAL).exists()
    with pytest.raises(OutputError, match="already complete"):
        with prepare_output(out_dir, "x", {"steps": 5}, resume=True):
            pass


def test_disk_room_and_write_errors_are_one_line(tmp_path):
    with pytest.raises(OutputError, match="not enough room"):
        with prepare_output(tmp_path / "o", "x", {}, expected_bytes=2**62):
            pass
    assert not (tmp_path / "o").exists()
    with pytest.raises(OutputError, match="cannot write to .*No space left"):
        with prepare_output(tmp_path / "o", "x", {}):
            raise OSError(28, "No space left on device")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_location_is_refused(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            with prepare_output(tmp_path / "o", "x", {}):
                pass
    finally:
        tmp_path.chmod(0o755)


# --- Validation up front -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("learning_rate", float("nan")),
        ("learning_rate", -1.0),
        ("momentum", -5.0),
        ("momentum", 1.0),
        ("decay_steps", 0),
        ("decay_rate", float("inf")),
        ("reg_param", -1e-3),
        ("train_subset", 0),
        ("train_subset", -5),
        ("epochs", 0),
        ("batch_size", 2.5),
    ],
)
def test_train_config_refuses(field, value):
    with pytest.raises(JaxoipError, match=field.split("_")[0]):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "nan"], "learning rate must be a finite number"),
        (["--lr", "-1"], "learning rate must be above 0"),
        (["--momentum", "-5"], "momentum must be at least 0"),
        (["--decay-steps", "0"], "decay steps must be at least 1"),
        (["--train-subset", "0"], "train subset must be at least 1"),
        pytest.param(["--batch-size", "1000000"], "use --batch-size 9", marks=pytest.mark.mnist),
    ],
)
def test_train_command_refuses_before_any_work(argv, message, capsys, tmp_path, monkeypatch, request):
    if "--batch-size" in argv:  # Sized for MNIST's 60,000 training images.
        request.getfixturevalue("mnist")
    monkeypatch.setattr("jaxoip.models.memory.available_bytes", lambda: 8 * 2**30)  # Whatever the test machine has.
    _one_line_exit_2(capsys, train_cmd.main, argv + ["--out", str(tmp_path / "o")], message)
    assert not (tmp_path / "o").exists()


def test_train_subset_larger_than_the_data(mnist):
    with pytest.raises(JaxoipError, match="larger than the 60000 training images"):
        train_lib.train(TrainConfig(train_subset=60_001, epochs=1), data=mnist, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epsilon": float("nan")}, "epsilon must be a finite number"),
        ({"epsilon": float("inf")}, "epsilon must be a finite number"),
        ({"epsilon": 0.0}, "epsilon must be above 0"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"conv_criterion": float("nan")}, "convergence criterion"),
        ({"snapshot_steps": (1.5,)}, "snapshot step must be an integer"),
    ],
)
def test_oip_config_refuses(kwargs, message):
    with pytest.raises(JaxoipError, match=message):
        OIPConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_samples": 0}, {"bootstrap": -1}, {"oip_maps": 0}, {"ci": float("nan")}, {"thresholds": (float("nan"),)}],
)
def test_compare_config_refuses(kwargs):
    with pytest.raises(JaxoipError):
        CompareConfig(**kwargs)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--precursor-starts", "0"], "precursor starts must be at least 1"),
        (["--precursor-starts", "-3"], "precursor starts must be at least 1"),
        (["--screen", "0"], "screen must be at least 1"),
        (["--restarts", "0"], "restarts must be at least 1"),
        (["--chunk-size", "0"], "chunk size must be at least 1"),
        (["--epsilon", "nan"], "epsilon must be a finite number"),
        (["--epsilon", "inf"], "epsilon must be a finite number"),
        (["--chunk-size", "100000", "--restarts", "1000"], "XLA's memory analysis"),
    ],
)
def test_scan_command_refuses_before_any_work(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("jaxoip.models.memory.available_bytes", lambda: 8 * 2**30)
    from jaxoip.cli import scan_all_maps

    _one_line_exit_2(capsys, scan_all_maps.main, argv + ["--out", str(tmp_path / "o")], message)
    assert not (tmp_path / "o").exists()


def test_reversed_range_is_refused():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="reversed range '5-2'"):
        cli.int_list("0,5-2")
    assert cli.int_list("0,2-4") == [0, 2, 3, 4]


def _untrained() -> TrainedModel:
    return TrainedModel(model=init_model(ModelConfig(), 0), standardization=Standardization(0.13, 0.31))


def test_scan_maps_restarts_zero_is_not_the_default():
    with pytest.raises(JaxoipError, match="restarts must be at least 1"):
        scan.scan_maps(_untrained(), map_indices=[0], restarts=0)


def test_search_refuses_nan_starts_and_fractional_maps():
    model = _untrained().model
    x = np.zeros((2, 28, 28, 1), np.float32)
    with pytest.raises(LayerError, match="must be integers"):
        search_oips(model, "Conv2D_3", [0.5, 1], x, OIPConfig(steps=2))
    x[1, 3, 3, 0] = np.nan
    with pytest.raises(JaxoipError, match="NaN"):
        search_oips(model, "Conv2D_3", [0, 1], x, OIPConfig(steps=2))


def test_load_mnist_of_a_number_is_one_clear_error():
    with pytest.raises(DataError, match="data_dir must be a folder path, got 123"):
        load_mnist(123)


# --- Divergence, memory -----------------------------------------------------------------------------------


def test_diverged_search_names_the_step():
    n, steps = 3, 5
    res = {
        "images": np.zeros((n, 28, 28, 1), np.float32),
        "objective": np.array([1.0, np.nan, 1.0]),
        "traces": np.ones((n, steps)),
    }
    res["traces"][1, 3:] = np.nan
    with pytest.raises(DivergenceError, match="start 1 became non-finite at step 3"):
        check_finite(res)
    res["objective"][1] = 1.0
    res["traces"][1] = 1.0
    check_finite(res)


def test_diverged_training_stops_with_the_epoch(mnist, tmp_path, capsys):
    cfg = TrainConfig(epochs=2, train_subset=256, optimizer="sgd", learning_rate=1e30, momentum=0.0, schedule="none")
    with pytest.raises(DivergenceError, match="training diverged in epoch 1"):
        train_lib.train(cfg, data=mnist, progress=False)


def test_out_of_memory_is_one_line(capsys, monkeypatch):
    def main(argv):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 59000000000 bytes.")

    err = _one_line_exit_2(capsys, main, [], "out of memory")
    assert "use a smaller batch or chunk size" in err  # A function outside the commands' modules.
    from jaxoip.models.memory import check_fits

    monkeypatch.setattr("jaxoip.models.memory.available_bytes", lambda: 8 * 2**30)
    with pytest.raises(OutOfMemoryError, match=r"use --chunk-size \d+ or less"):
        check_fits(ModelConfig(), 10**9, "a chunk", "--chunk-size")
    check_fits(ModelConfig(), 64, "a chunk", "--chunk-size")


def test_activations_checks_every_image_before_writing(capsys, tmp_path, mnist):
    from jaxoip.cli import activations

    argv = ["--image", "test:1", "--compare", "test:2", "--versus", "test:99999999", "--out", str(tmp_path / "o")]
    _one_line_exit_2(capsys, activations.main, argv, "99999999")
    assert not (tmp_path / "o").exists()


# --- Resume --------------------------------------------------------------------------------------------------


def _env():
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))


@pytest.mark.slow
def test_killed_training_resumes_to_identical_weights(tmp_path, mnist):
    """A real `train` command killed with SIGKILL after its first epoch, then finished with --resume."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "jaxoip", "train", "--epochs", "2", "--train-subset", "256", "--seed", "3"]
    args += ["--no-progress", "--out", str(out)]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / PARTIAL / "epochs" / "1").is_dir():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    # Nothing that looks complete: no checkpoint, the marker says running.
    assert read_marker(out)["status"] == "running"
    assert not (out / "metadata.json").exists() and not (out / "history.json").exists()
    with pytest.raises(CheckpointError):
        load_model(out)
    again = subprocess.run(args, env=_env(), capture_output=True, text=True)
    assert again.returncode == 2 and "interrupted run" in again.stderr and "--resume" in again.stderr

    resumed = subprocess.run(args + ["--resume"], env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed)" in resumed.stdout
    assert read_marker(out)["status"] == "complete" and not (out / PARTIAL).exists()
    assert not list(out.glob(TMP_PREFIX + "*"))
    assert sorted(p.name for p in out.iterdir() if p.name not in (MARKER, LOCK)) == [
        "history.json", "history.png", "metadata.json", "state"
    ]  # fmt: skip
    got = load_model(out)
    ref = train_lib.train(TrainConfig(epochs=2, train_subset=256, seed=3), data=mnist, progress=False)
    for a, b in zip(jax.tree.leaves(nnx.state(got.model, nnx.Param)), jax.tree.leaves(nnx.state(ref.model, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert json.loads((out / "history.json").read_text())["val_accuracy"] == ref.history["val_accuracy"]


def test_interrupted_scan_resumes_without_redoing_groups(tmp_path, monkeypatch):
    trained = _untrained()
    kwargs = dict(map_indices=[0, 1, 2, 3], restarts=2, config=OIPConfig(steps=4), precursor_starts=4, screen=2)
    kwargs.update(chunk_size=2, seed=5)
    monkeypatch.setattr(search_groups, "GROUP_CHUNKS", 1)  # Groups of 2 images: 4 groups.
    whole = scan.scan_maps(trained, **kwargs)

    real, calls = search_groups.run_search, []

    def killed_after_two(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(search_groups, "run_search", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        scan.scan_maps(trained, partial_dir=tmp_path, **kwargs)
    assert len(list(tmp_path.glob("group_*.npz"))) == 2
    monkeypatch.setattr(search_groups, "run_search", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    calls.clear()
    resumed = scan.scan_maps(trained, partial_dir=tmp_path, **kwargs)
    assert len(calls) == 2  # Only the two groups not yet done.
    for name in ("images", "objective", "traces", "snapshots", "converged_step", "stayed_zero"):
        np.testing.assert_array_equal(getattr(resumed.oip, name), getattr(whole.oip, name))
    # Other settings: saved groups do not match and are searched again.
    calls.clear()
    scan.scan_maps(trained, partial_dir=tmp_path, **{**kwargs, "seed": 6})
    assert len(calls) == 4


def test_compare_seeds_resume_keeps_trained_models(tmp_path, mnist, monkeypatch):
    from jaxoip.models import multiseed
    from jaxoip.seeds import compare

    cfg = TrainConfig(epochs=1, train_subset=128)
    real, trained_seeds = multiseed.train_seeds, []

    def killed_on_seed_1(seeds, *a, **k):
        if 1 in seeds:
            raise KeyboardInterrupt
        out = real(seeds, *a, **k)
        trained_seeds.extend(seeds)
        first.extend(out)
        return out

    first = []
    monkeypatch.setattr(compare, "train_seeds", killed_on_seed_1)
    with pytest.raises(KeyboardInterrupt):
        compare.trained_models([0, 1], cfg, mnist, tmp_path, max_parallel=1, progress=False)
    assert (tmp_path / "seed_0" / "metadata.json").is_file() and not (tmp_path / "seed_1").exists()

    monkeypatch.setattr(
        compare, "train_seeds", lambda seeds, *a, **k: (trained_seeds.extend(seeds), real(seeds, *a, **k))[1]
    )
    trained_seeds.clear()
    models = compare.trained_models([0, 1], cfg, mnist, tmp_path, max_parallel=1, progress=False)
    assert trained_seeds == [1]
    p = lambda m: nnx.to_pure_dict(nnx.state(m.model, nnx.Param))  # noqa: E731
    assert params_checksum(p(models[0])) == params_checksum(p(first[0]))
    assert math.isfinite(models[1].history["loss"][-1])


def test_compare_seeds_model_folder_never_replaces_a_users_folder(tmp_path, mnist):
    from jaxoip.errors import OutputError
    from jaxoip.seeds import compare

    (tmp_path / "seed_1").mkdir()
    (tmp_path / "seed_1" / "notes.txt").write_text("mine")
    (tmp_path / ".seed_1.tmp-notes").mkdir()  # Looks like a leftover, but not by its full name.
    with pytest.raises(OutputError, match="seed_1 is not a checkpoint jaxoip wrote"):
        compare.trained_models([0, 1], TrainConfig(epochs=1, train_subset=128), mnist, tmp_path, progress=False)
    assert (tmp_path / "seed_1" / "notes.txt").read_text() == "mine"
    assert (tmp_path / ".seed_1.tmp-notes").is_dir() and not (tmp_path / "seed_0").exists()


# --- Overwrite removes only what jaxoip wrote, at every depth -------------------------------------------------


def _write_tree(out, tree):
    for rel, text in tree.items():
        (out.staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (out.staging / rel).write_text(text)


def test_overwrite_keeps_user_files_inside_jaxoip_folders(tmp_path):
    out_dir = tmp_path / "out"
    first = {"state/a": "1", "state/d/b": "1", "models/seed_0/state/x": "1", "models/seed_0/metadata.json": "1"}
    with prepare_output(out_dir, "x", {}) as out:
        _write_tree(out, first)
    marker = read_marker(out_dir)
    assert marker["files"] == ["models", "state"] and "state/d/b" in marker["tree"] and "state/d/" in marker["tree"]
    # The user adds files inside jaxoip's folders, and a whole folder models/seed_9.
    (out_dir / "state" / "notes.txt").write_text("mine")
    (out_dir / "models" / "seed_9").mkdir()
    (out_dir / "models" / "seed_9" / "w.bin").write_text("mine")
    (out_dir / "models" / "seed_0" / "state" / "mine.txt").write_text("mine")
    with prepare_output(out_dir, "x", {}, overwrite=True) as out:
        _write_tree(out, {"state/a": "2", "models/seed_1/metadata.json": "2"})
    assert (out_dir / "state" / "notes.txt").read_text() == "mine"
    assert (out_dir / "models" / "seed_9" / "w.bin").read_text() == "mine"
    assert (out_dir / "models" / "seed_0" / "state" / "mine.txt").read_text() == "mine"
    assert (out_dir / "state" / "a").read_text() == "2" and not (out_dir / "state" / "d").exists()
    assert not (out_dir / "models" / "seed_0" / "metadata.json").exists()  # Ours: removed; the folder stays.
    assert (out_dir / "models" / "seed_1" / "metadata.json").read_text() == "2"
    assert "models/seed_9/w.bin" not in read_marker(out_dir)["tree"]
    # A user's file where the new result wants to write is a clash: nothing replaced.
    (out_dir / "state" / "b").write_text("mine")
    with pytest.raises(OutputError, match="state/b, which jaxoip did not write"):
        with prepare_output(out_dir, "x", {}, overwrite=True) as out:
            _write_tree(out, {"state/b": "3"})
    assert (out_dir / "state" / "b").read_text() == "mine" and (out_dir / "state" / "a").read_text() == "2"


def test_save_model_overwrite_keeps_a_file_in_state(tiny_trained, tmp_path):
    from jaxoip.models.checkpoint import save_model

    path = save_model(tmp_path / "m", tiny_trained)
    (path / "state" / "README.txt").write_text("mine")
    save_model(path, tiny_trained, overwrite=True)
    assert (path / "state" / "README.txt").read_text() == "mine"
    load_model(path)


def test_overwrite_of_an_old_marker_with_folders_is_refused(tmp_path):
    out_dir = tmp_path / "old"
    (out_dir / "state").mkdir(parents=True)
    (out_dir / "state" / "x").write_text("?")
    (out_dir / MARKER).write_text(json.dumps({"command": "x", "status": "complete", "files": ["state"]}))
    with pytest.raises(OutputError, match=r"older jaxoip.*\(state/\)"):
        with prepare_output(out_dir, "x", {}, overwrite=True):
            pass
    assert (out_dir / "state" / "x").read_text() == "?"


# --- A failed run with nothing kept leaves the folder as it found it ------------------------------------------


def test_diverged_training_leaves_the_folder_as_it_found_it(tmp_path, capsys, tiny_npz):
    argv = ["--epochs", "1", "--train-subset", "128", "--optimizer", "sgd", "--momentum", "0", "--schedule", "none"]
    argv += ["--lr", "1e10", "--no-progress", "--no-cache", *tiny_npz]
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    for out in (new, empty, new):  # The rerun of a failed run starts as cleanly as the first.
        _one_line_exit_2(capsys, train_cmd.main, argv + ["--out", str(out)], "training diverged")
    assert not new.exists() and list(empty.iterdir()) == []
    # A failed overwrite of a complete result keeps the result and its complete marker.
    with prepare_output(tmp_path / "done", "train", {}) as out:
        _write(out, **{"a.txt": "old"})
    _one_line_exit_2(capsys, train_cmd.main, argv + ["--out", str(tmp_path / "done"), "--overwrite"], "diverged")
    assert read_marker(tmp_path / "done")["status"] == "complete" and not (tmp_path / "done" / PARTIAL).exists()
    assert (tmp_path / "done" / "a.txt").read_text() == "old"


# --- A resume must use the same inputs; --out apart from the inputs -----------------------------------------


def _idx_dir(folder, seed):
    """A small MNIST-shaped IDX folder; `seed` makes its pixels differ."""
    import gzip

    folder.mkdir()
    rng = np.random.default_rng(seed)
    for name, shape, magic in (
        ("train-images-idx3-ubyte", (64, 28, 28), 2051),
        ("train-labels-idx1-ubyte", (64,), 2049),
        ("t10k-images-idx3-ubyte", (16, 28, 28), 2051),
        ("t10k-labels-idx1-ubyte", (16,), 2049),
    ):
        arr = rng.integers(0, 10 if magic == 2049 else 256, shape)
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
        with gzip.open(folder / f"{name}.gz", "wb") as f:
            f.write(header + arr.astype(np.uint8).tobytes())
    return folder


def _killed_after_saving(folder_arg):
    """A stand-in for the work of a command: keeps one file of work in its partial folder, then is killed."""

    def killed(*a, **k):
        folder = Path(k.get(folder_arg) if folder_arg in k else a[-1 if folder_arg == "last" else 3])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "work.bin").write_text("done")
        raise KeyboardInterrupt

    return killed


def test_train_resume_refuses_other_data(tmp_path, monkeypatch, capsys):
    a, b = _idx_dir(tmp_path / "a", 1), _idx_dir(tmp_path / "b", 2)
    out = tmp_path / "run"
    argv = ["--epochs", "1", "--no-progress", "--no-cache", "--out", str(out)]
    monkeypatch.setattr(train_cmd, "train", _killed_after_saving("checkpoint_dir"))
    assert cli.run(train_cmd.main, argv + ["--data-dir", str(a)]) == 130
    capsys.readouterr()
    assert read_marker(out)["status"] == "running" and (out / PARTIAL / "epochs" / "work.bin").exists()
    _one_line_exit_2(capsys, train_cmd.main, argv + ["--data-dir", str(b), "--resume"], "the data is not the")
    monkeypatch.setenv("JAXOIP_DATA_DIR", str(b))  # The same change through the environment.
    _one_line_exit_2(capsys, train_cmd.main, argv + ["--resume"], "the data is not the interrupted run's")
    assert (out / PARTIAL / "epochs" / "work.bin").exists()  # The refused resume kept the work.
    monkeypatch.setattr(train_cmd, "train", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.run(train_cmd.main, argv + ["--data-dir", str(a), "--resume"]) == 130  # Same data: goes on.


def _saved_untrained(path, seed):
    from jaxoip.models.checkpoint import save_model

    model = TrainedModel(model=init_model(ModelConfig(), seed), standardization=Standardization(33.3, 78.6))
    return save_model(path, model, overwrite=path.exists())


def test_scan_resume_refuses_a_changed_model(tmp_path, monkeypatch, capsys):
    from jaxoip.cli import scan_all_maps

    data = _idx_dir(tmp_path / "data", 1)
    model = _saved_untrained(tmp_path / "model", 0)
    out = tmp_path / "scan"
    argv = ["--model", str(model), "--maps", "0-1", "--restarts", "1", "--steps", "2", "--precursor-starts", "2"]
    argv += ["--screen", "1", "--exemplars", "0", "--data-dir", str(data), "--no-progress", "--no-cache"]
    argv += ["--out", str(out)]
    monkeypatch.setattr(jobs, "scan_layer", _killed_after_saving("partial_dir"))
    assert cli.run(scan_all_maps.main, argv) == 130
    capsys.readouterr()
    _saved_untrained(model, 1)  # Same path, other contents.
    _one_line_exit_2(capsys, scan_all_maps.main, argv + ["--resume"], "the model is not the interrupted run's")
    assert (out / PARTIAL / "search" / "work.bin").exists()


def test_compare_seeds_resume_refuses_other_data(tmp_path, monkeypatch, capsys):
    from jaxoip.cli import compare_seeds
    from jaxoip.seeds import compare

    a, b = _idx_dir(tmp_path / "a", 1), _idx_dir(tmp_path / "b", 2)
    out = tmp_path / "cmp"
    argv = ["--seeds", "2", "--epochs", "1", "--blocks", "4", "--no-progress", "--no-cache", "--out", str(out)]
    monkeypatch.setattr(compare, "trained_models", _killed_after_saving("folder"))
    monkeypatch.setenv("JAXOIP_DATA_DIR", str(a))  # --data-dir is a setting; the environment is not.
    assert cli.run(compare_seeds.main, argv) == 130
    capsys.readouterr()
    monkeypatch.setenv("JAXOIP_DATA_DIR", str(b))
    _one_line_exit_2(capsys, compare_seeds.main, argv + ["--resume"], "the data is not the interrupted run's")
    assert (out / PARTIAL / "models" / "work.bin").exists()


def test_out_apart_from_the_inputs(tmp_path, capsys):
    from jaxoip.cli import activations, compare_seeds, scan_all_maps

    model = _saved_untrained(tmp_path / "model", 0)
    before = sorted(str(p) for p in model.rglob("*"))
    data = tmp_path / "data"
    data.mkdir()
    cases = [
        (scan_all_maps.main, ["--model", str(model), "--out", str(model), "--overwrite"], "is the --model input"),
        (scan_all_maps.main, ["--model", str(model), "--out", str(model / "scan")], "lies inside the --model"),
        (scan_all_maps.main, ["--data-dir", str(data), "--out", str(tmp_path)], "contains the --data-dir input"),
        (train_cmd.main, ["--data-dir", str(data), "--out", str(data / "m")], "lies inside the --data-dir"),
        (activations.main, ["--model", str(model), "--confusion", "--out", str(model / "a")], "inside the --model"),
        (compare_seeds.main, ["--models", str(model), str(model), "--out", str(model)], "is the --models input"),
    ]
    for main, argv, message in cases:
        _one_line_exit_2(capsys, main, argv, message)
    assert sorted(str(p) for p in model.rglob("*")) == before and list(data.iterdir()) == []


def test_damaged_saved_group_is_searched_again(tmp_path, monkeypatch, capsys):
    trained = _untrained()
    kwargs = dict(map_indices=[0, 1, 2, 3], restarts=2, config=OIPConfig(steps=4), precursor_starts=4, screen=2)
    kwargs.update(chunk_size=2, seed=5, progress=False)
    monkeypatch.setattr(search_groups, "GROUP_CHUNKS", 1)
    whole = scan.scan_maps(trained, partial_dir=tmp_path, **kwargs)
    groups = sorted(tmp_path.glob("group_*.npz"))
    groups[1].write_bytes(groups[1].read_bytes()[:300])  # Truncated.
    groups[2].write_bytes(b"garbage")
    real, calls = search_groups.run_search, []
    monkeypatch.setattr(search_groups, "run_search", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    capsys.readouterr()
    again = scan.scan_maps(trained, partial_dir=tmp_path, **kwargs)
    assert len(calls) == 2
    err = capsys.readouterr().err
    assert err.count("warning: saved search group") == 2 and "searching it again" in err, err
    for name in ("images", "objective", "traces"):
        np.testing.assert_array_equal(getattr(again.oip, name), getattr(whole.oip, name))


@pytest.mark.parametrize("mode", ["resume", "overwrite"])
def test_a_killed_runs_staging_folder_with_this_pid_does_not_block_the_folder(tmp_path, mode):
    # After a SIGKILL the staging folder survives; in a container the next process often has the same pid.
    out = tmp_path / "out"
    with prepare_output(out, "test", {"a": 1}) as o:
        (o.staging / "result.txt").write_text("first")
    marker = read_marker(out)
    marker["status"] = "running"
    (out / MARKER).write_text(json.dumps(marker))
    (out / PARTIAL).mkdir()
    (out / PARTIAL / "work.bin").write_text("kept work")
    leftover = out / f"{TMP_PREFIX}{os.getpid()}"
    leftover.mkdir()
    (leftover / "half.txt").write_text("half-written")
    with prepare_output(out, "test", {"a": 1}, overwrite=mode == "overwrite", resume=mode == "resume") as o:
        (o.staging / "result.txt").write_text("second")
    assert (out / "result.txt").read_text() == "second" and read_marker(out)["status"] == "complete"
    assert not leftover.exists()


def test_compare_seeds_refuses_models_with_the_same_name(tmp_path, capsys, mnist):
    from jaxoip.cli import compare_seeds

    a, b = _saved_untrained(tmp_path / "a" / "model", 0), _saved_untrained(tmp_path / "b" / "model", 1)
    argv = ["--models", str(a), str(b), "--out", str(tmp_path / "cmp")]
    _one_line_exit_2(capsys, compare_seeds.main, argv, "--models share the name 'model'")
    assert not (tmp_path / "cmp").exists()


def test_only_folders_named_like_staging_folders_are_cleaned(tmp_path):
    out = tmp_path / "out"
    with prepare_output(out, "test", {}) as o:
        (o.staging / "result.txt").write_text("first")
    stale, other = out / f"{TMP_PREFIX}123", out / f"{TMP_PREFIX}notes-123"
    for folder in (stale, other):
        folder.mkdir()
        (folder / "f.txt").write_text("x")
    with prepare_output(out, "test", {}, overwrite=True) as o:
        (o.staging / "result.txt").write_text("second")
    assert not stale.exists()  # A killed run's staging folder.
    assert (other / "f.txt").read_text() == "x"  # Not a name jaxoip gives: left alone.
