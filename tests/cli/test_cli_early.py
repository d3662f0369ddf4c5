"""A bad argument costs a second: the commands check what needs no model and no data before importing JAX,
and import only what they need (issue 28; "errors come late" of issue 27)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxoip.models import cnn, spec
from jaxoip.models.metadata import checkpoint_model_config, reference_model_path

ROOT = Path(__file__).resolve().parents[2]
BAD_SCANS = [
    (["--layer", "Conv2D_9"], "unknown map or vector layer 'Conv2D_9'"),
    (["--maps", "0-200"], "map index 128 out of range: Conv2D_3 has maps 0..127"),
    (["--node", "5,0"], "node (5, 0) outside the 3x3 maps of Conv2D_3"),
    (["--layer", "Dense_2", "--node", "1,1"], "--node applies to maps, not to the vector layer Dense_2"),
    (["--restarts", "0"], "restarts must be at least 1"),
]


def _python(code: str, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args, "-c", code] if code else [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=kw.pop("cwd", ROOT),
        timeout=120,
        **kw,
    )


def test_scan_refuses_bad_arguments_before_importing_jax(tmp_path):
    """Each bad argument is one `error:` line and status 2, with neither JAX nor Flax imported and no folder written."""
    code = f"""
import contextlib, io, json, sys
from jaxoip import cli
from jaxoip.cli.scan_all_maps import main
out = []
for argv in {json.dumps([a for a, _ in BAD_SCANS])}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.run(main, argv + ["--out", {str(tmp_path / "out")!r}])
    out.append([code, err.getvalue(), sorted(m for m in ("jax", "flax", "orbax", "optax") if m in sys.modules)])
print(json.dumps(out))
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for (argv, message), (code, err, imported) in zip(BAD_SCANS, results):
        assert code == 2, argv
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, (argv, err)
        assert imported == [], (argv, imported)
    assert not (tmp_path / "out").exists()


def test_mistyped_layer_through_the_command_line_imports_no_jax(tmp_path):
    """`python -m jaxoip scan_all_maps --layer ...` with JAX, Flax and SciPy made unimportable: still the one line
    and exit 2 (an import of any of them before the check would end in a traceback instead)."""
    code = """
import runpy, sys
class NoJax:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "flax", "scipy"):
            raise ImportError(f"imported {name} before the arguments were checked")
sys.meta_path.insert(0, NoJax())
sys.argv = ["jaxoip", "scan_all_maps", "--layer", "conv2d_3"]
runpy.run_module("jaxoip", run_name="__main__", alter_sys=True)
"""
    proc = _python(code, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown map or vector layer 'conv2d_3'"), lines
    assert not (tmp_path / "scan_out").exists()


# What each command may not import before it runs: JAX for the scan (it checks its arguments first), and for
# every command the libraries of figures, tables, sites and other frameworks, imported where they are used.
HEAVY = ("matplotlib", "jinja2", "orbax", "keras", "tensorflow", "torch")
NOT_IMPORTED = {
    "scan_all_maps": (*HEAVY, "jax", "flax", "scipy", "pandas"),
    "train": (*HEAVY, "pandas"),
    "compare_seeds": (*HEAVY, "pandas"),
    "microscope": (*HEAVY, "pandas"),
    "activations": HEAVY,  # Its tables are pandas.
}


def test_commands_import_only_what_they_need():
    code = f"""
import importlib, json, sys
out = {{}}
for name, banned in {json.dumps(NOT_IMPORTED)}.items():
    before = set(sys.modules)
    importlib.import_module("jaxoip.cli." + name)
    out[name] = sorted(b for b in banned if b in sys.modules)
print(json.dumps(out))
"""
    # One process per command: a module imported by an earlier command would hide a later one's imports.
    for name in NOT_IMPORTED:
        proc = _python(code.replace(f"{json.dumps(NOT_IMPORTED)}", json.dumps({name: NOT_IMPORTED[name]})))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {name: []}


def test_checkpoint_model_config_reads_the_metadata():
    meta = json.loads((reference_model_path() / "metadata.json").read_text())
    config = checkpoint_model_config(None)
    assert config == spec.ModelConfig.from_dict(meta["model_config"]) == checkpoint_model_config("reference")
    assert spec.layer_shapes(config)["Conv2D_3"] == (3, 3, 128)


def test_checkpoint_model_config_leaves_other_models_to_their_loader(tmp_path):
    """A Keras file, a factory, a missing or damaged checkpoint: None, and the loader says what is wrong."""
    (tmp_path / "m.keras").write_bytes(b"PK")
    assert checkpoint_model_config(tmp_path / "m.keras") is None
    assert checkpoint_model_config(str(tmp_path / "net.py") + ":factory") is None
    assert checkpoint_model_config(tmp_path / "missing") is None
    edited = tmp_path / "edited"
    (edited / "state").mkdir(parents=True)
    meta = json.loads((reference_model_path() / "metadata.json").read_text())
    meta["model_config"]["conv"][2][0] = 64  # The checksum no longer matches.
    (edited / "metadata.json").write_text(json.dumps(meta))
    assert checkpoint_model_config(edited) is None


def test_layer_specs_name_the_activations_the_network_has():
    assert tuple(cnn._ACTIVATIONS) == spec.ACTIVATIONS


@pytest.mark.parametrize("name", ["Conv2D_9", "flatten"])
def test_early_and_late_checks_say_the_same(name):
    """The early check is the library's own: `get_layer` on the loaded config gives the same message."""
    from jaxoip.errors import LayerError
    from jaxoip.oip.config import target_maps

    config = checkpoint_model_config(None)
    with pytest.raises(LayerError) as early:
        target_maps(config, name, None)
    with pytest.raises(LayerError) as late:
        cnn.get_layer(cnn.ModelConfig(), name, cnn.SEARCH_KINDS)
    assert str(early.value) == str(late.value)


def test_the_jobs_import_their_writers_on_a_thread_of_their_own():
    """`jaxoip.jobs` imports no pandas, SciPy's clustering or matplotlib itself: `prefetch_imports` loads them on
    a daemon thread while a scan's data pass runs, and the job's tables and figures then find them."""
    code = """
import sys, threading
import jaxoip.jobs
from jaxoip._prefetch import WRITER_MODULES, prefetch_imports
first = sorted(m for m in WRITER_MODULES if m in sys.modules)
prefetch_imports()
prefetch_imports()  # once per process
threads = [t for t in threading.enumerate() if t.name == "jaxoip-prefetch"]
assert len(threads) == 1, threads
threads[0].join(120)
print(first, sorted(m for m in WRITER_MODULES if m not in sys.modules))
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "[]"]


def test_a_command_process_collects_rarely_and_leaves_without_the_cyclic_walk():
    """`cli.execute` (a command's process) makes full collections rarer while the command runs and freezes the heap
    before the exit, where Python would otherwise walk every module's objects once more."""
    code = """
import atexit, gc, sys
from jaxoip import cli
seen = {}
def main(argv):
    seen["threshold"] = gc.get_threshold()
    return 0
atexit.register(lambda: print(seen["threshold"][2], gc.get_freeze_count() > 0))
cli.execute(main, [])
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    from jaxoip.cli import COMMAND_GC_THRESHOLD

    assert proc.stdout.split() == [str(COMMAND_GC_THRESHOLD), "True"]
