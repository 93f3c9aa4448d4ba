"""The ``seamfree`` command line: parse, run one command, and turn errors into one line and exit status 2.

Errors raised on purpose (``SeamfreeError``) and bad arguments print one line and exit with status 2;
tracebacks appear only with ``--verbose``. Arguments are in :mod:`seamfree.cli.parser`, the commands in
:mod:`seamfree.cli.commands`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from seamfree.allocator import tune_cpu_allocator
from seamfree.cli.parser import build_parser
from seamfree.errors import SeamfreeError

EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    tune_cpu_allocator()  # before torch or any reader starts a thread
    try:
        return int(args.handler(args))
    except (SeamfreeError, argparse.ArgumentTypeError) as exc:
        if args.verbose:
            raise
        print(f"seamfree {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"seamfree {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
