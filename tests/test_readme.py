"""The README stays true: every command in it parses, and its Python example runs."""

import re
import shlex
from pathlib import Path

import pytest

from jaxoip.__main__ import COMMANDS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands() -> list[list[str]]:
    """Every `python -m jaxoip ...` line of the README's bash blocks, as argv (comments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:3] == ["python", "-m", "jaxoip"]:
                    out.append(words[3:])
                elif words[:2] == ["python", "-m"] and words[2].startswith("jaxoip."):
                    out.append([words[2].removeprefix("jaxoip."), *words[3:]])
    return out


def test_the_readme_has_commands_for_every_command():
    assert {argv[0] for argv in _commands()} >= set(COMMANDS)


@pytest.mark.parametrize("argv", _commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv):
    """Each command's options exist and take the given values (a renamed flag fails here)."""
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]][0])
    module._parser().parse_args(argv[1:])


def test_readme_python_example_runs(mnist):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["scan"].images.shape == (16, 4, 28, 28, 1)
    assert namespace["res"].images.shape == (8, 28, 28, 1)
