"""The scans' data: read on a thread of its own while JAX starts, the model loads and the scan is planned, and
reported where the scan takes it (issue 28)."""

import argparse
import gzip
import hashlib
import signal
import threading
import time
import types

import numpy as np
import pytest

from jaxoip import cli
from jaxoip.cli import microscope, scan_all_maps, scans
from jaxoip.data import images
from jaxoip.data import mnist as data_lib
from jaxoip.errors import DataError, JaxoipError
from jaxoip.oip import plan as scan_plan

COMMANDS = [(scan_all_maps.main, ["--maps", "0-1"]), (microscope.main, [])]


def _idx_dir(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for stem, shape, magic in (
        ("train-images-idx3-ubyte", (8, 28, 28), 2051),
        ("train-labels-idx1-ubyte", (8,), 2049),
        ("t10k-images-idx3-ubyte", (4, 28, 28), 2051),
        ("t10k-labels-idx1-ubyte", (4,), 2049),
    ):
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
        with gzip.open(folder / f"{stem}.gz", "wb") as f:
            f.write(header + rng.integers(0, 10, shape).astype(np.uint8).tobytes())
    return folder


@pytest.mark.parametrize("main, argv", COMMANDS)
def test_data_loads_while_the_plan_is_made(tmp_path, monkeypatch, capsys, main, argv):
    """The load runs on another thread, begun before the plan; what it raised waits for the point where the scan
    takes its data, so an error of the plan is still the one reported."""
    loading, seen = threading.Event(), {}

    def load_data(path, data_dir, optional=False):
        seen["thread"] = threading.current_thread()
        loading.set()
        raise DataError("bad data")

    def plan_scan(*args, **kwargs):
        seen["loading during the plan"] = loading.wait(10)
        raise JaxoipError("plan refused")

    monkeypatch.setattr(images, "load_data", load_data)
    monkeypatch.setattr(scan_plan, "plan_scan", plan_scan)
    out = tmp_path / "out"
    rc = cli.run(main, [*argv, "--data-dir", str(tmp_path / "data"), "--no-progress", "--out", str(out)])
    assert seen.get("loading during the plan") and seen["thread"] is not threading.main_thread()
    assert rc == 2 and capsys.readouterr().err == "error: plan refused\n"
    assert not out.exists()


def test_a_data_error_is_one_line_after_the_plan(tmp_path, capsys):
    """A --data-dir that does not load: the loader's one line and status 2, as when the scan loaded it itself."""
    data = tmp_path / "data"
    data.mkdir()
    argv = ["--maps", "0-1", "--restarts", "1", "--steps", "2", "--precursor-starts", "2", "--screen", "1"]
    rc = cli.run(scan_all_maps.main, [*argv, "--data-dir", str(data), "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: missing MNIST file train-images-idx3-ubyte[.gz] in {data.resolve()}\n"


def test_the_checksum_is_hashed_once_with_the_data(tmp_path, monkeypatch):
    """`start_data` has the images hashed off the main thread (by the thread that reads the files,
    `jaxoip.data.idx`); `jobs.check_inputs` then finds the checksum made."""
    threads = []

    def sha256():
        threads.append(threading.current_thread())
        return hashlib.sha256()

    monkeypatch.setattr(data_lib, "hashlib", types.SimpleNamespace(sha256=sha256))
    load = scans.start_data(argparse.Namespace(data=None, data_dir=str(_idx_dir(tmp_path / "data"))))
    data = load()
    assert data.checksum() == data.checksum() == data_lib.load_idx_dir(tmp_path / "data").checksum()
    assert threads == [threading.main_thread()]  # Only the fresh load, not read ahead, hashed here.


def test_ctrl_c_while_the_scan_waits_for_its_data(tmp_path, monkeypatch):
    """A Ctrl-C lands at once in the main thread waiting for the load, as it did in its own read."""
    release = threading.Event()
    monkeypatch.setattr(images, "load_data", lambda *args, **kwargs: release.wait(60))
    load = scans.start_data(argparse.Namespace(data=str(tmp_path), data_dir=None))
    threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        load()
    release.set()
    assert time.monotonic() - started < 10


def test_no_data_named_loads_on_the_main_thread(monkeypatch):
    """Without a file or folder, MNIST could come from tensorflow-datasets: loaded where the scan takes its data,
    after JAX has its accelerator."""
    monkeypatch.delenv(data_lib.DATA_DIR_ENV, raising=False)
    assert scans.start_data(argparse.Namespace(data=None, data_dir=None)) is None
