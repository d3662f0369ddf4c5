"""`python -m jaxoip.train`: train the CNN (see `jaxoip.cli.train`)."""

from jaxoip import cli
from jaxoip.cli.train import main

__all__ = ["main"]

if __name__ == "__main__":
    cli.execute(main)
