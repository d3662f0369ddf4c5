import subprocess
import sys

import pytest

import jaxoip


def test_every_public_name_resolves():
    for name in jaxoip.__all__:
        assert getattr(jaxoip, name) is not None, name
    assert jaxoip.train_model is jaxoip.models.train.train  # The module keeps its name.


@pytest.mark.slow
def test_commands_run_as_modules_without_double_import_warning():
    for command in ("train", "scan_all_maps", "activations", "compare_seeds"):
        proc = subprocess.run(
            [sys.executable, "-W", "error::RuntimeWarning", "-m", f"jaxoip.{command}", "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert "usage: python -m jaxoip." in proc.stdout
