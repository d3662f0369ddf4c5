"""`python -m jaxoip.microscope`: every layer of a model into one site; the command lives in `jaxoip.cli.microscope`."""

from jaxoip import cli
from jaxoip.cli.microscope import main

__all__ = ["main"]

if __name__ == "__main__":
    cli.execute(main)
