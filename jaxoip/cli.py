"""Shared plumbing of the `python -m jaxoip.NAME` commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from jaxoip.errors import JaxoipError


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Runs a command; a user error becomes one line on stderr and exit status 2."""
    try:
        return int(main(argv) or 0)
    except JaxoipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from jaxoip._memory import is_out_of_memory

        if not is_out_of_memory(e):
            raise
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        print(f"error: out of memory ({first[:200]}); use a smaller --batch-size or --chunk-size", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def int_list(text: str) -> list[int]:
    """Parses '0-3,7,10-11' into [0, 1, 2, 3, 7, 10, 11]."""
    out = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise argparse.ArgumentTypeError(f"reversed range {part!r} in {text!r}; write {hi}-{lo}")
                out.extend(range(lo, hi + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers or ranges like 0-3,7; got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"empty list {text!r}")
    return out


def add_data_dir(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder with the four MNIST IDX files (default: $JAXOIP_DATA_DIR, else tensorflow-datasets)",
    )
