"""Command line: ``python -m captum_smoothhess demo [--out DIR]``."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``captum-smoothhess`` console script."""
    parser = argparse.ArgumentParser(prog="captum-smoothhess", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the end-to-end demo on offline data")
    demo.add_argument("--out", default="demo_output", help="folder for figures and report")
    demo.add_argument("--quick", action="store_true", help="fewer samples, for smoke tests")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(out=args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
