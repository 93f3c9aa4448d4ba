"""Options several commands share, spelled once."""

from __future__ import annotations

import argparse

__all__ = ["add_trust_code"]

TRUST_HELP = ("consent to run code that travels with the model: a pickled nn.Module or torch.export program, a "
              "bioimage.io architecture outside seamfree's list of network classes, TorchScript whose code reaches "
              "files or the system (--allow-pickle is the older name)")


def add_trust_code(parser: argparse.ArgumentParser) -> None:
    """``--trust-code`` (older name ``--allow-pickle``): the one consent flag for code from a model file."""
    parser.add_argument("--trust-code", "--allow-pickle", dest="trust_code", action="store_true", help=TRUST_HELP)
