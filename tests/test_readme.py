"""The README stays true: every command in it parses, its examples run top to bottom, its script is the file.

`test_readme_examples_run_in_order` (slow) runs, in README order and in one empty temporary folder that
plays the project root (it holds `jaxoip/reference_model`, a link to the shipped model, and `my_images.npz`,
generated 32x32x3 images of 10 classes like the README's), every line of
the README's bash blocks that starts with `python -m jaxoip` (in this process, through `jaxoip.cli.run`).
Other lines are not run there: setting up, activating the environment, and the example scripts (`python examples/*.py`),
which writes nothing and has its own test (`test_example_script_runs_as_a_script`, a new process with
JAXOIP_EXAMPLE_QUICK=1). The rules:
- tiny settings: each option in TINY[command] that a line gives with a larger value takes TINY's value,
  and one it does not give is added (`--epochs` and `--train-subset` of compare_seeds only with `--seeds`);
  commands that compute also get `--no-progress --no-cache`;
- a line commented `# error: A ... B` must exit with status 2, printing A and B;
- a line commented `# interrupted (Ctrl-C) after epoch N` (train) or `after group N` (scan_all_maps) gets a
  KeyboardInterrupt right after it saved epoch N or search group N, and must exit with status 130;
- every other line must exit with status 0, and its `--out` folder must be marked complete.
"""

import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jaxoip.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLE = ROOT / "examples" / "from_python.py"
OWN_MODEL = ROOT / "examples" / "own_model.py"
MAKE_IMAGES = ROOT / "examples" / "make_images.py"

TINY = {
    "scan_all_maps": {"--steps": 8, "--restarts": 2, "--precursor-starts": 8, "--screen": 2},
    "train": {"--epochs": 2, "--train-subset": 640},
    "compare_seeds": {
        "--test-subset": 500,
        "--max-samples": 20_000,
        "--blocks": 10,
        "--bootstrap": 20,
        "--oip-maps": 4,
        "--oip-restarts": 2,
        "--oip-steps": 8,
        "--epochs": 1,
        "--train-subset": 640,
    },
    "activations": {},
    "microscope": {"--steps": 8, "--restarts": 2, "--precursor-starts": 8},
}
ENGINE = ("--no-progress", "--no-cache")  # For the commands that take them (not activations).


def _bash_lines() -> list[tuple[list[str], str]]:
    """(words, comment) of every line of the README's bash blocks, `&&`-joined commands split, in order."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            code, _, comment = line.partition("  #")  # The README's comments follow two or more spaces.
            for part in code.split("&&"):
                words = shlex.split(part, comments=True)
                if words:
                    out.append((words, comment.strip()))
    return out


def _commands() -> list[list[str]]:
    """Every `python -m jaxoip ...` line of the README's bash blocks, as argv (command name first)."""
    out = []
    for words, _ in _bash_lines():
        if words[:3] == ["python", "-m", "jaxoip"]:
            out.append(words[3:])
    return out


def tiny(argv: list[str]) -> list[str]:
    """`argv` (command name first) at the TINY settings, by the rules in this module's docstring."""
    name, args = argv[0], list(argv[1:])
    for opt, cap in TINY[name].items():
        if name == "compare_seeds" and opt in ("--epochs", "--train-subset") and "--seeds" not in args:
            continue
        if opt in args:
            i = args.index(opt) + 1
            args[i] = str(min(int(args[i]), cap))
        else:
            args += [opt, str(cap)]
    if name != "activations":
        args += list(ENGINE)
    return [name, *args]


def test_the_readme_has_commands_for_every_command():
    assert {argv[0] for argv in _commands()} >= set(COMMANDS)


def test_the_readme_starts_commands_through_one_door():
    """`python -m jaxoip NAME` (installed: `jaxoip NAME`); the doors removed in 0.2.0 are not shown."""
    assert not re.findall(r"python -m jaxoip\.\w+|jaxoip-(?:scan|train|activ|compare|micro)[\w-]*", README)


@pytest.mark.parametrize("argv", _commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv):
    """Each command's options exist and take the given values (a renamed flag fails here), also at tiny settings."""
    module = importlib.import_module(COMMANDS[argv[0]][0])
    module._parser().parse_args(argv[1:])
    module._parser().parse_args(tiny(argv)[1:])


def test_tiny_caps_given_values_and_adds_missing_ones():
    got = tiny(["train", "--epochs", "40", "--seed", "1", "--out", "r"])
    assert got == ["train", "--epochs", "2", "--seed", "1", "--out", "r", "--train-subset", "640", *ENGINE]
    assert tiny(["train", "--epochs", "1"])[:3] == ["train", "--epochs", "1"]  # Already smaller: kept.
    assert "--epochs" not in tiny(["compare_seeds", "--models", "a", "b"])  # Only with --seeds.


def test_readme_shows_the_example_scripts():
    """The README's Python blocks are examples/from_python.py and examples/own_model.py, the files that are run
    as scripts (slow tests below)."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks == [EXAMPLE.read_text(), OWN_MODEL.read_text()]
    for script in ("examples/from_python.py", "examples/own_model.py"):
        assert ["python", script] in [words for words, _ in _bash_lines()]


def _example_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAXOIP_EXAMPLE_QUICK": "1", **extra}


def test_example_script_names_a_folder_that_hides_the_package(tmp_path):
    """Beside a folder named jaxoip/ (a checkout), `import jaxoip` finds that folder; the script says so in one line.

    `python -S` (no site-packages, so no installed jaxoip) makes the folder the only `jaxoip` to import.
    """
    (tmp_path / "jaxoip").mkdir()
    script = tmp_path / "from_python.py"
    script.write_text(EXAMPLE.read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: the folder {tmp_path / 'jaxoip'} hides the installed jaxoip package; run this script from another "
        "folder, or install with: pip install -e . --config-settings editable_mode=compat"
    ]


@pytest.mark.slow
def test_example_script_runs_as_a_script(tmp_path, mnist):
    """`python examples/from_python.py` from another folder prints its table and shapes (tiny settings)."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)], cwd=tmp_path, env=_example_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "best_objective" in out and "method" in out
    assert "images (4, 2, 28, 28, 1) traces (4, 2, 20)" in out
    objectives = re.search(r"objective of each \(map, start\): (.*)", out).group(1).split()
    assert len(objectives) == 8 and all(float(v) == float(v) for v in objectives)  # 8 finite numbers, no NaN.
    assert "Conv2D_2 activations of 8 test images: (8, 11, 11, 64)" in out


@pytest.mark.slow
def test_own_model_example_runs_as_a_script(tmp_path, mnist):
    """`python examples/own_model.py` prints the module's layers, a scan table, exemplars and a grid's shape."""
    proc = subprocess.run(
        [sys.executable, str(OWN_MODEL)], cwd=tmp_path, env=_example_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "layers: stem.layers.0, stem, blocks.0.conv, blocks.0, blocks.1.conv, blocks.1, classifier" in out
    assert "best_objective" in out and "top test images of blocks.0 map 0: [" in out
    assert "stem activations of test image 0: (28, 28, 8)" in out


def _interrupt(monkeypatch, what: str, n: int):
    """A KeyboardInterrupt right after epoch `n` is saved (what='epoch') or search group `n` is done ('group')."""
    from jaxoip.models import train as train_lib
    from jaxoip.oip import groups as search_groups

    if what == "epoch":
        real = train_lib.save_epoch

        def save_then_stop(manager, epoch, *a, **k):
            real(manager, epoch, *a, **k)
            if epoch == n:
                manager.wait_until_finished()
                raise KeyboardInterrupt

        monkeypatch.setattr(train_lib, "save_epoch", save_then_stop)
    else:
        real, calls = search_groups.run_search, []

        def stop_after_n(*a, **k):
            if len(calls) == n:
                raise KeyboardInterrupt
            calls.append(1)
            return real(*a, **k)

        monkeypatch.setattr(search_groups, "run_search", stop_after_n)


def _own_images(path: Path):
    """The README's `my_images.npz`, written by the README's own `examples/make_images.py` (so they cannot drift)."""
    spec = importlib.util.spec_from_file_location("make_images", MAKE_IMAGES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_images(path)


def test_readme_makes_its_images_before_using_them(tmp_path):
    """`python examples/make_images.py` comes before the first line that reads my_images.npz; it writes 32x32x3
    images of 10 classes that load_images reads, and a second run leaves the file alone with one line."""
    import numpy as np

    from jaxoip.data.images import load_images

    lines = [words for words, _ in _bash_lines()]
    first_use = next(i for i, words in enumerate(lines) if "my_images.npz" in words)
    assert ["python", "examples/make_images.py"] in lines[:first_use]

    def make():
        return subprocess.run(
            [sys.executable, str(MAKE_IMAGES)], cwd=tmp_path, env=_example_env(), capture_output=True, text=True
        )

    run = make()
    assert run.returncode == 0, run.stderr
    data = load_images(tmp_path / "my_images.npz")
    assert data.train_images.shape == (1200, 32, 32, 3) and data.test_images.shape == (300, 32, 32, 3)
    assert set(np.unique(data.train_labels)) == set(range(10))
    before = (tmp_path / "my_images.npz").read_bytes()
    again = make()
    assert again.returncode != 0 and len(again.stderr.strip().splitlines()) == 1 and "exists" in again.stderr
    assert (tmp_path / "my_images.npz").read_bytes() == before


@pytest.mark.slow
def test_readme_examples_run_in_order(tmp_path, mnist, monkeypatch, capsys):
    """Every example of the README, top to bottom, at tiny settings (rules in this module's docstring)."""
    from jaxoip import cli

    (tmp_path / "jaxoip").mkdir()
    (tmp_path / "jaxoip" / "reference_model").symlink_to(ROOT / "jaxoip" / "reference_model")
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # --model examples/own_model.py:factory
    _own_images(tmp_path / "my_images.npz")
    monkeypatch.chdir(tmp_path)
    ran = []
    for words, comment in _bash_lines():
        if words[:3] != ["python", "-m", "jaxoip"]:
            continue
        argv = words[3:]
        if any("torch_model.py" in word for word in argv) and importlib.util.find_spec("torchax") is None:
            continue  # The PyTorch example needs the extra (`pip install 'jaxoip[torch]'`; CI installs it).
        argv = tiny(argv)
        line = " ".join(argv)
        with monkeypatch.context() as m:
            stop = re.match(r"interrupted \(Ctrl-C\) after (epoch|group) (\d+)", comment)
            if stop:
                _interrupt(m, stop.group(1), int(stop.group(2)))
            code = cli.run(importlib.import_module(COMMANDS[argv[0]][0]).main, argv[1:])
        err = capsys.readouterr().err
        if comment.startswith("error:"):
            assert code == 2, f"{line}: exit {code}, expected the error {comment!r}"
            for piece in comment.removeprefix("error:").split("..."):
                assert piece.strip() in err, f"{line}: {piece.strip()!r} not in {err!r}"
        elif stop:
            assert code == 130, f"{line}: exit {code}, expected an interruption: {err[-2000:]}"
        else:
            assert code == 0, f"{line}: exit {code}: {err[-2000:]}"
            out = argv[argv.index("--out") + 1] if "--out" in argv else None
            if out is not None:
                assert json.loads((tmp_path / out / ".jaxoip.json").read_text())["status"] == "complete", line
        ran.append(argv[0])
    assert set(ran) >= set(COMMANDS)
