"""Multi-process runs on localhost: JAX's distributed runtime, CPU devices through JAX_NUM_CPU_DEVICES, Gloo.

Each run is real subprocesses of `python -m jaxoip scan_all_maps`, as a user (or srun) starts them.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxoip import distributed
from jaxoip.data import mnist as data_lib
from jaxoip.errors import JaxoipError

ROOT = Path(__file__).resolve().parents[1]
# A tiny scan: 4 maps x 2 starts, 2 images per device, no MNIST (the data phases run alike on every process).
SCAN = ["--maps", "0-3", "--steps", "8", "--restarts", "2", "--precursor-starts", "8", "--screen", "2"]
SCAN += ["--chunk-size", "2", "--exemplars", "0", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXOIP_DATA_DIR", "XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(
        PYTHONPATH=str(ROOT),
        JAX_NUM_CPU_DEVICES=str(devices),
        JAX_PLATFORMS="cpu",
        JAXOIP_CACHE_DIR=str(cache),
        PYTHONUNBUFFERED="1",
    )
    return env


def _start(args, devices, cache, cwd, env=None, command="scan_all_maps") -> subprocess.Popen:
    """`python -m jaxoip COMMAND ARGS` in a child process; `env` adds to `_env`'s variables."""
    return subprocess.Popen(
        [sys.executable, "-m", "jaxoip", command, *args],
        env={**_env(devices, cache), **(env or {})},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _scan(tmp: Path, model: Path, processes: int, devices: int, extra=(), timeout: float = 300):
    """Runs the scan on `processes` x `devices`; returns each process's (returncode, stdout, stderr) and out."""
    port = _free_port()
    procs = []
    for i in range(processes):
        args = [*SCAN, "--model", str(model), "--out", str(tmp / f"out{i}"), *extra]
        if processes > 1:
            args += ["--coordinator", f"localhost:{port}", "--num-processes", str(processes), "--process-id", str(i)]
        procs.append(_start(args, devices, tmp.parent / "cache", tmp))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append((p.returncode, out, err))
    return results


@pytest.mark.slow
def test_two_processes_give_the_bits_of_one(tiny_checkpoint, tmp_path):
    """2 processes x 2 devices: oips.npz equals 1 x 4 and 1 x 1 bit for bit; process 1 writes and prints nothing."""
    runs = {}
    for processes, devices in ((1, 1), (1, 4), (2, 2)):
        tmp = tmp_path / f"{processes}x{devices}"
        tmp.mkdir()
        results = _scan(tmp, tiny_checkpoint, processes, devices)
        for rc, _, err in results:
            assert rc == 0, err[-2000:]
        runs[processes, devices] = np.load(tmp / "out0" / "oips.npz")
        if processes == 2:
            assert "on 4 cpu device(s)" in results[0][1]
            assert not (tmp / "out1").exists() and sorted(p.name for p in tmp.iterdir()) == ["out0"]
            assert results[1][1] == "" and "[Gloo]" not in results[0][1]  # Gloo's notices are filtered out.
            assert "error" not in results[1][2] and "warning" not in results[1][2]
    one = runs[1, 1]
    for key in one.files:
        assert np.array_equal(one[key], runs[1, 4][key]), key
        assert np.array_equal(one[key], runs[2, 2][key]), key


@pytest.mark.slow
def test_mismatched_settings_refused(tiny_checkpoint, tmp_path):
    """A different --maps on process 1 stops both processes before any work, with one line each."""
    port = _free_port()
    procs = []
    for i, maps in enumerate(("0-3", "0-2")):
        args = [*SCAN, "--maps", maps, "--model", str(tiny_checkpoint), "--out", str(tmp_path / f"out{i}")]
        args += ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)]
        procs.append(_start(args, 1, tmp_path / "cache", tmp_path))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2
        assert err.strip().splitlines()[-1].startswith("error: process 1 was started with settings that differ")
    assert not (tmp_path / "out0").exists()


@pytest.mark.slow
def test_process_that_never_joins(tiny_checkpoint, tmp_path):
    """Only process 0 of 2 starts: one line naming the cause, exit 2, within the timeout (and nothing written)."""
    t0 = time.monotonic()
    (rc, out, err), *_ = _scan(
        tmp_path,
        tiny_checkpoint,
        1,
        1,
        ["--coordinator", f"localhost:{_free_port()}"]
        + ["--num-processes", "2", "--process-id", "0", "--distributed-timeout", "3"],
    )
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: process 0 of 2 could not join the run") and "--distributed-timeout 3 s" in err
    assert time.monotonic() - t0 < 60 and not (tmp_path / "out0").exists()


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(coordinator="localhost:1234"), "together"),
        (dict(coordinator="localhost", num_processes=2, process_id=0), "HOST:PORT"),
        (dict(coordinator="h:1", num_processes=2, process_id=2), "--process-id must be 0 to 1"),
        (dict(coordinator="h:1", num_processes=0, process_id=0), "--num-processes must be at least 1"),
        (dict(distributed_timeout=0), "--distributed-timeout"),
    ],
)
def test_bad_distributed_flags(fields, message):
    with pytest.raises(JaxoipError, match=message):
        distributed.DistributedConfig(**fields)


def test_plain_run_stays_one_process(monkeypatch):
    """No flags and no cluster: nothing is initialized (JAX's detection is not even asked to connect)."""
    for name in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.start(distributed.DistributedConfig()) is False
    assert distributed.process_count() == 1 and distributed.is_main()


@pytest.mark.slow
def test_killed_process_ends_the_run_and_resume_finishes_on_one(tiny_checkpoint, tmp_path):
    """Process 1 killed mid-search: process 0 exits non-zero with one line within the timeout; --resume on
    1 process x 1 device reuses the saved groups and gives the bits of an uninterrupted run."""
    timeout = 30
    many = ["--maps", "0-11", "--chunk-size", "1", "--steps", "300"]  # 3 saved groups of 8 images, seconds each.
    port = _free_port()
    procs = []
    for i in range(2):
        args = [*SCAN, *many, "--model", str(tiny_checkpoint), "--out", str(tmp_path / "out")]
        args += ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)]
        procs.append(_start([*args, "--distributed-timeout", str(timeout)], 2, tmp_path / "cache", tmp_path))
    first = tmp_path / "out" / ".jaxoip-partial" / "search" / "group_00000.npz"
    deadline = time.monotonic() + 240
    while not first.exists() and procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.exists(), procs[0].communicate()[1][-2000:]
    procs[1].kill()
    killed = time.monotonic()
    _, err = procs[0].communicate(timeout=timeout + 60)
    procs[1].communicate()
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note: no MNIST")]
    assert procs[0].returncode != 0 and len(lines) == 1 and lines[0].startswith("error: process 0"), err
    assert time.monotonic() - killed < timeout + 30
    assert not (tmp_path / "out" / "oips.npz").exists()

    args = [*SCAN, *many, "--model", str(tiny_checkpoint)]
    resumed = _start([*args, "--out", str(tmp_path / "out"), "--resume"], 1, tmp_path / "cache", tmp_path)
    fresh = _start([*args, "--out", str(tmp_path / "fresh")], 1, tmp_path / "cache", tmp_path)
    for p in (resumed, fresh):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    a, b = np.load(tmp_path / "out" / "oips.npz"), np.load(tmp_path / "fresh" / "oips.npz")
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert '"earlier_search_seconds": 0.0' not in summary  # Some groups came from the killed run.


# Trains `seeds` (argv[2]) on 256 images for 1 epoch with train_seeds, all at once or ("alone") each seed by
# itself, as process argv[5] of 2 when a coordinator (argv[4]) is given; saves every seed's state to argv[1].
_TRAIN = r"""
import sys
import jax
import numpy as np
from flax import nnx
from jaxoip import distributed
from jaxoip.data import mnist as data_lib
from jaxoip.models.multiseed import train_seeds
from jaxoip.models.train import TrainConfig

out, seeds, alone, join = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], sys.argv[3] == "alone", sys.argv[4:]
if join:
    distributed.start(distributed.DistributedConfig(join[0], 2, int(join[1]), distributed_timeout=120))
cfg = TrainConfig(epochs=1, train_subset=256)
if alone:
    models = [train_seeds([s], cfg, progress=False)[0] for s in seeds]
else:
    models = train_seeds(seeds, cfg, progress=False)
states = [jax.tree.leaves(nnx.state(m.model)) for m in models]
leaves = {f"{s}/{i}": np.asarray(a) for s, state in zip(seeds, states) for i, a in enumerate(state)}
np.savez(out, **leaves, val=np.array([m.history["val_accuracy"] for m in models]))
"""


@pytest.mark.slow
def test_train_seeds_over_two_processes_gives_each_seed_alone(mnist, tmp_path):
    """2 processes x 1 device share 2 seeds: every process gets both, bit-identical to each seed trained alone."""
    port = _free_port()
    env = {**_env(1, tmp_path / "cache"), "JAXOIP_DATA_DIR": os.environ["JAXOIP_DATA_DIR"]}

    def train(name, *args):
        cmd = [sys.executable, "-c", _TRAIN, str(tmp_path / f"{name}.npz"), "0,1", *args]
        return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [train(f"p{i}", "together", f"localhost:{port}", str(i)) for i in range(2)]
    procs.append(train("alone", "alone"))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    alone = np.load(tmp_path / "alone.npz")
    for i in range(2):
        spread = np.load(tmp_path / f"p{i}.npz")
        assert sorted(spread.files) == sorted(alone.files)
        for key in alone.files:
            assert np.array_equal(spread[key], alone[key]), (i, key)
    assert not np.array_equal(alone["0/0"], alone["1/0"])  # Two seeds really differ.


@pytest.mark.slow
def test_compare_seeds_over_two_processes_writes_on_process_0(mnist, tmp_path):
    """2 processes x 2 devices train a seed each; process 0 alone compares (OIP search on its own devices) and
    writes; process 1 exits 0 after training, printing nothing and writing nothing."""
    port = _free_port()
    env = {**_env(2, tmp_path / "cache"), "JAXOIP_DATA_DIR": os.environ["JAXOIP_DATA_DIR"]}
    tiny = ["--seeds", "2", "--epochs", "1", "--train-subset", "256", "--test-subset", "60", "--layers", "Conv2D_3"]
    tiny += ["--blocks", "5", "--max-samples", "1000", "--bootstrap", "5", "--oip-steps", "3", "--oip-restarts", "2"]
    tiny += ["--oip-maps", "2", "--no-html", "--no-progress", "--coordinator", f"localhost:{port}"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxoip", "compare_seeds", *tiny, "--num-processes", "2", "--process-id", str(i)]
            + ["--out", str(tmp_path / f"out{i}")],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    assert "Conv2D_3: same features?" in results[0][0] and "wrote" in results[0][0]
    assert results[1] == ("", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out0"]
    assert (tmp_path / "out0" / "report.md").is_file()
    assert sorted(p.name for p in (tmp_path / "out0" / "models").iterdir()) == ["seed_0", "seed_1"]


@pytest.mark.slow
def test_compare_seeds_killed_process_then_resume_on_one(mnist, tmp_path):
    """Process 1 killed in the second round of seeds: process 0 exits non-zero with one line and keeps the first
    round; --resume on one process trains only the rest and gives every seed the bits of an uninterrupted run."""
    env = {**_env(1, tmp_path / "cache"), "JAXOIP_DATA_DIR": os.environ["JAXOIP_DATA_DIR"]}
    tiny = ["--seeds", "4", "--max-parallel", "1", "--epochs", "2", "--train-subset", "512", "--test-subset", "60"]
    tiny += ["--layers", "Conv2D_1", "--oip-layer", "none", "--blocks", "5", "--max-samples", "1000"]
    tiny += ["--bootstrap", "5", "--no-html", "--no-progress"]
    join = ["--coordinator", f"localhost:{_free_port()}", "--num-processes", "2", "--distributed-timeout", "30"]

    def run(*args):
        cmd = [sys.executable, "-m", "jaxoip", "compare_seeds", *tiny, *args]
        return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [run(*join, "--process-id", str(i), "--out", str(tmp_path / "out")) for i in range(2)]
    first = tmp_path / "out" / ".jaxoip-partial" / "models" / "seed_1" / "metadata.json"
    deadline = time.monotonic() + 240
    while not first.exists() and procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.exists(), procs[0].communicate()[1][-2000:]
    procs[1].kill()
    killed = time.monotonic()
    out, err = procs[0].communicate(timeout=90)
    procs[1].communicate()
    assert procs[0].returncode == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: process 0 lost the others") and time.monotonic() - killed < 60
    assert sorted(p.name for p in first.parents[1].iterdir()) == ["seed_0", "seed_1"]

    resumed = run("--out", str(tmp_path / "out"), "--resume")
    fresh = run("--out", str(tmp_path / "fresh"))
    for p in (resumed, fresh):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    for s in range(4):
        meta = [
            json.loads((tmp_path / d / "models" / f"seed_{s}" / "metadata.json").read_text()) for d in ("out", "fresh")
        ]
        assert meta[0]["params_checksum"] == meta[1]["params_checksum"], s


@pytest.mark.slow
def test_the_readmes_two_process_scan_writes_exemplars_and_site(mnist, tmp_path):
    """The README's command, tiny: process 1 must not wait at JAX's shutdown barrier while process 0 computes
    exemplars and the site (a short --distributed-timeout makes that barrier's timeout shorter than they take)."""
    port = _free_port()
    data = {"JAXOIP_DATA_DIR": os.environ[data_lib.DATA_DIR_ENV]}
    tiny = ["--steps", "20", "--restarts", "2", "--precursor-starts", "8", "--screen", "2"]
    tiny += ["--distributed-timeout", "5"]
    args = ["--maps", "0-15", "--coordinator", f"localhost:{port}", "--num-processes", "2", "--out", "scan_2x2"]
    procs = [_start([*args, "--process-id", str(i), *tiny], 2, tmp_path / "cache", tmp_path, data) for i in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    out = tmp_path / "scan_2x2"
    assert json.loads((out / "summary.json").read_text())["processes"] == 2
    assert any(out.rglob("index.html")) and f"wrote {out}" in results[0][0]
    assert json.loads((out / ".jaxoip.json").read_text())["status"] == "complete"
