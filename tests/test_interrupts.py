"""Ctrl-C ends a command within seconds (issue 27), and names --resume when work was kept.

Models from `file.py:factory` stand for large ones (an ImageNet-sized Keras or torch model): one's forward pass
holds an unrolled loop that XLA takes tens of seconds to compile, the other's a loop that runs for minutes.
jaxlib (>= 0.10.2, the floor) checks for signals while it compiles, blocks (`block_until_ready`) or copies
(`jax.device_get`); converting an unfinished array (`np.asarray`, `float`) blocks without a check, so jaxoip
waits for results with `numerics.fetch`. The compile tests pin jaxlib's part. Data-free.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# The module and factory around `heavy`: built once (BUILT), so the factory's probe of the model stays quick.
MODULE = """

class Slow(nnx.Module):
    def __init__(self):
        self.stem = nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0))
        self.head = nnx.Linear(4, 10, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.head(nnx.relu(self.stem(heavy(x))).mean(axis=(1, 2)))


def factory():
    global BUILT
    model = jaxoip.from_nnx(Slow(), (28, 28, 1))
    BUILT = True
    return model
"""


def _slow_inputs(tmp_path: Path, factory: str) -> None:
    """slow.py (`factory`'s heavy pass around MODULE) and d.npz (20 random 28x28 images) in `tmp_path`."""
    (tmp_path / "slow.py").write_text(factory + MODULE)
    x = np.random.default_rng(0).integers(0, 256, (20, 28, 28), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(20) % 10, x_test=x, y_test=np.arange(20) % 10)


# Slow to compile once the model is built (its probe traces it quickly) and, where $SLOW_ONCE_KEPT names a file,
# once that exists: the scan's program that follows kept work then compiles for tens of seconds, like a large
# model's remainder chunk.
SLOW_FACTORY = """
import os

import jax
import jax.numpy as jnp
from flax import nnx

import jaxoip

BUILT = False


def heavy(x):
    kept = os.environ.get("SLOW_ONCE_KEPT")
    if not BUILT or (kept and not os.path.exists(kept)):
        return x
    print("compiling slowly", flush=True)

    def body(v, _):
        return jnp.tanh(v @ v.T * 0.1 + jnp.sin(v)), None

    v = jax.lax.scan(body, jnp.tanh(x.reshape(-1)[:256].reshape(16, 16)), None, length=3000, unroll=3000)[0]
    return jnp.where(jnp.isfinite(v.sum()), x, 0.0)  # x itself, through code XLA cannot drop.

"""


def _interrupted_scan(tmp_path, env_extra: dict) -> tuple[int, str, float, Path]:
    """Runs a cold scan of the slow factory, sends SIGINT 1.5 s after the slow compile began; (status, stderr,
    seconds from the interrupt to the exit, --out)."""
    _slow_inputs(tmp_path, SLOW_FACTORY)
    out = tmp_path / "scan"
    argv = [
        sys.executable, "-m", "jaxoip", "scan_all_maps", "--model", f"{tmp_path / 'slow.py'}:factory",
        "--layer", "stem", "--maps", "0-2", "--steps", "5", "--restarts", "2", "--screen", "1",
        "--precursor-starts", "2", "--chunk-size", "4", "--exemplars", "0", "--data", str(tmp_path / "d.npz"),
        "--no-cache", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXOIP_CACHE_DIR": str(tmp_path / "cache"), **env_extra}
    env = {k: v.format(out=out) for k, v in env.items()}
    return (*_interrupted_in_slow_compile(argv, env), out)


def _interrupted_in_slow_compile(argv: list[str], env: dict) -> tuple[int, str, float]:
    """Starts the command, sends SIGINT 1.5 s after the slow compile began; (status, stderr, seconds from the
    interrupt to the exit)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while (line := p.stdout.readline()) != "compiling slowly\n":
            assert line, p.communicate()  # Ended without reaching the slow compile.
        time.sleep(1.5)  # Traced and lowered (0.5 s) by then: XLA compiles, for 20 s or more on a 2-core CPU.
        p.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, err = p.communicate(timeout=120)
        seconds = time.monotonic() - t0
    finally:
        p.kill()
        p.wait()
    return p.returncode, err, seconds


@pytest.mark.slow
def test_ctrl_c_during_a_cold_compile_ends_the_command_at_once(tmp_path):
    code, err, seconds, out = _interrupted_scan(tmp_path, {})
    assert code == 130 and err.strip() == "interrupted", err
    assert seconds < 5  # Not when the compile returns (50 s alone on a 2-core VM).
    assert not out.exists()  # Nothing was kept: the folder is left as it was found (absent).


@pytest.mark.slow
def test_ctrl_c_during_a_compile_after_kept_work_names_resume(tmp_path):
    kept = "{out}/.jaxoip-partial/search/group_00000.npz"
    code, err, seconds, out = _interrupted_scan(tmp_path, {"SLOW_ONCE_KEPT": kept})
    assert code == 130, err
    assert err.strip() == f"interrupted; the work done is kept in {out}: run the command again with --resume", err
    assert seconds < 5
    assert json.loads((out / ".jaxoip.json").read_text())["status"] == "running"  # Not marked complete.
    assert (out / ".jaxoip-partial" / "search" / "group_00000.npz").is_file() and not (out / "summary.json").exists()


# Minutes to run once the model is built, quick to compile: a pass of a large model on a CPU.
SLOW_TO_RUN = """
import jax
import jax.numpy as jnp
from flax import nnx

import jaxoip

BUILT = False


def heavy(x):
    if not BUILT:
        return x
    print("running slowly", flush=True)
    v = jnp.full((384, 384), 1 / 384) + x.mean() * 1e-9
    v = jax.lax.fori_loop(0, 100_000, lambda i, v: jnp.tanh(v @ v.T), v)
    return jnp.where(jnp.isfinite(v.sum()), x, 0.0)

"""


def test_ctrl_c_while_activations_runs_a_large_model_ends_it(tmp_path):
    """An activation grid waited for its pass in one blocking call (`np.asarray`), which no Ctrl-C ends."""
    _slow_inputs(tmp_path, SLOW_TO_RUN)
    argv = [
        sys.executable, "-m", "jaxoip", "activations", "--model", f"{tmp_path / 'slow.py'}:factory", "--layer", "stem",
        "--per-row", "4", "--image", "test:0", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "a"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXOIP_CACHE_DIR": str(tmp_path / "cache")}
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while (line := p.stdout.readline()) != "running slowly\n":
            assert line, p.communicate()
        time.sleep(4)  # Compiled (about a second) and running: the loop alone takes minutes.
        p.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the command went on for 30 s after Ctrl-C")
        seconds = time.monotonic() - t0
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 130 and err.strip() == "interrupted", err
    assert seconds < 5
    assert not (tmp_path / "a").exists()


# Slow to compile only while $SLOW_AFTER names a file that exists: the first layer's search runs quickly, and
# the program after it (that layer's data pass) compiles for tens of seconds, like a large model's.
SLOW_AFTER_FACTORY = SLOW_FACTORY.replace(
    'kept = os.environ.get("SLOW_ONCE_KEPT")\n    if not BUILT or (kept and not os.path.exists(kept)):',
    'kept = os.environ.get("SLOW_AFTER")\n    if not BUILT or not kept or not os.path.exists(kept):',
)


@pytest.mark.slow
def test_ctrl_c_of_microscope_says_what_it_kept_and_resume_goes_on(tmp_path):
    """An interrupted microscope said only "interrupted"; it names the layers whose search it kept, and --resume."""
    assert SLOW_AFTER_FACTORY != SLOW_FACTORY
    _slow_inputs(tmp_path, SLOW_AFTER_FACTORY)
    out = tmp_path / "micro"
    argv = [
        sys.executable, "-m", "jaxoip", "microscope", "--model", f"{tmp_path / 'slow.py'}:factory",
        "--layers", "stem,head", "--steps", "5", "--restarts", "2", "--precursor-starts", "2", "--exemplars", "0",
        "--data", str(tmp_path / "d.npz"), "--no-progress", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXOIP_CACHE_DIR": str(tmp_path / "cache")}
    kept = out / ".jaxoip-partial" / "stem" / "search" / "group_00000.npz"
    code, err, seconds = _interrupted_in_slow_compile(argv, {**env, "SLOW_AFTER": str(kept)})
    assert code == 130 and seconds < 5, (code, err)
    assert err.strip() == (
        f"interrupted; the work done is kept in {out}: the finished search of stem (the files and sites are "
        "written once every layer is done); run the command again with --resume"
    ), err
    assert json.loads((out / ".jaxoip.json").read_text())["status"] == "running" and kept.is_file()
    # The same command with --resume goes on from there (and no longer compiles slowly) to a complete site.
    done = subprocess.run([*argv, "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / ".jaxoip.json").read_text())["status"] == "complete"
    assert (out / "index.html").is_file() and (out / "stem" / "site").is_dir() and (out / "head" / "site").is_dir()
