import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import jaxoip


def test_every_public_name_resolves():
    for name in jaxoip.__all__:
        assert getattr(jaxoip, name) is not None, name
    assert jaxoip.train is importlib.import_module("jaxoip.models.train").train


def test_one_door_per_command():
    """`python -m jaxoip NAME` (installed: `jaxoip NAME`) is the only way in: no `jaxoip.NAME` shim modules."""
    from jaxoip.__main__ import COMMANDS

    package = Path(jaxoip.__file__).parent
    for name in COMMANDS:
        assert not (package / f"{name}.py").exists() and not (package / name / "__main__.py").exists(), name
        assert not hasattr(importlib.import_module(f"jaxoip.cli.{name}"), "entry"), name


@pytest.mark.slow
def test_commands_run_without_double_import_warning():
    for command in ("train", "scan_all_maps", "activations", "compare_seeds", "microscope"):
        proc = subprocess.run(
            [sys.executable, "-W", "error::RuntimeWarning", "-m", "jaxoip", command, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"usage: python -m jaxoip {command}" in proc.stdout
