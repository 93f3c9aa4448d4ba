"""The ``seamfree`` argument parser: commands, options, their help, and deprecated option names."""

from __future__ import annotations

import argparse
from typing import NoReturn

from seamfree._version import __version__
from seamfree.cli.commands import COMMANDS

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (what was wrong and where the help is), exit status 2; the
    usage block argparse prints by default is in ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``seamfree`` command: every module of :mod:`seamfree.cli.commands` adds
    its own subcommand."""
    parser = _Parser(
        prog="seamfree", description="Segmentation of very large images, free of tiling artifacts."
    )
    parser.add_argument("--version", action="version", version=f"seamfree {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    for sub in subparsers.choices.values():  # -v also after the command (`seamfree predict ... -v`)
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="debug logging and full tracebacks")
    return parser
