"""Command line: ``python -m captum_smoothhess demo [--out DIR] [--quick]``."""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence


def _check_out(parser: argparse.ArgumentParser, out: str) -> None:
    """Create the ``--out`` folder now, or exit with a usage error (code 2), before any work starts."""
    if not out:
        parser.error("argument --out: expected a folder, got an empty string")
    if os.path.exists(out) and not os.path.isdir(out):
        parser.error(f"argument --out: {out!r} exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        parser.error(f"argument --out: cannot create folder {out!r}: {e.strerror or e}")
    if not os.access(out, os.W_OK | os.X_OK):
        parser.error(f"argument --out: folder {out!r} is not writable")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``captum-smoothhess`` console script."""
    parser = argparse.ArgumentParser(
        prog="captum-smoothhess",
        description="captum-smoothhess command line (also `python -m captum_smoothhess`).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo}")
    demo = sub.add_parser(
        "demo",
        help="run the end-to-end demo on offline data",
        description="Train small ReLU networks on offline data (scikit-learn's digits, Four Quadrant), "
        "explain them, and write PNG figures and a report.md that embeds them.",
    )
    demo.add_argument(
        "--out",
        default="demo_output",
        metavar="DIR",
        help="folder for the figures and report.md, created if needed; existing files of the same "
        "name are overwritten (default: %(default)s)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: fewer samples and training steps, a few seconds, noisier numbers",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        _check_out(demo, args.out)
        from .demo import run_demo

        run_demo(out=args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
