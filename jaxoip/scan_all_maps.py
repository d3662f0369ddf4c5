"""`python -m jaxoip.scan_all_maps`: the OIP search for every map of a layer (see `jaxoip.cli.scan_all_maps`)."""

from jaxoip import cli
from jaxoip.cli.scan_all_maps import main

__all__ = ["main"]

if __name__ == "__main__":
    cli.execute(main)
