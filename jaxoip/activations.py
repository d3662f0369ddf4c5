"""`python -m jaxoip.activations`: activation grids, predictions and exemplars (see `jaxoip.cli.activations`)."""

from jaxoip import cli
from jaxoip.cli.activations import main

__all__ = ["main"]

if __name__ == "__main__":
    cli.execute(main)
