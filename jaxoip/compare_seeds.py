"""`python -m jaxoip.compare_seeds`: the seed comparison; the command lives in `jaxoip.cli.compare_seeds`."""

from jaxoip import cli
from jaxoip.cli.compare_seeds import main

__all__ = ["main"]

if __name__ == "__main__":
    cli.execute(main)
