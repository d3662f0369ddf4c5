"""`python -m jaxoip <command> [options]`: one entry point for every jaxoip command."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from jaxoip import cli  # First: sets XLA's flags before JAX starts.

COMMANDS = {
    "scan_all_maps": ("jaxoip.cli.scan_all_maps", "the OIP search for every map of a layer (the main job)"),
    "train": ("jaxoip.cli.train", "train a CNN (the study's or --conv/--pool/--dense) on MNIST or --data"),
    "activations": ("jaxoip.cli.activations", "activation grids, comparisons, predictions and exemplars"),
    "compare_seeds": ("jaxoip.cli.compare_seeds", "do independently trained copies learn the same filters?"),
    "microscope": ("jaxoip.cli.microscope", "every conv layer and the logits of a model scanned into one site"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: python -m jaxoip <command> [options]   (installed: jaxoip <command> [options])",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "python -m jaxoip <command> --help  shows a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    name = argv[0].replace("-", "_")
    if name not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[name][0])
    cli.execute(module.main, argv[1:])


if __name__ == "__main__":
    main()
