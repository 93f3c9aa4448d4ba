"""The ``seamfree`` command line: parse, run one command, and turn errors into one line and exit status 2.

Errors raised on purpose (``SeamfreeError``) and bad arguments print one line and exit with status 2;
tracebacks appear only with ``--verbose``. A run paused by a signal (a walltime, a preemption) says where it
stopped and exits with status 75 (rerun to resume). Arguments are in :mod:`seamfree.cli.parser`, the commands in
:mod:`seamfree.cli.commands`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence

from seamfree.allocator import tune_cpu_allocator
from seamfree.cli.parser import build_parser
from seamfree.errors import Paused, SeamfreeError

EXIT_BAD_INPUT = 2
EXIT_UNEXPECTED = 1
# stopped on request (SIGTERM, SIGINT, SIGUSR1) after writing its work: rerun to resume (EX_TEMPFAIL; the sbatch
# script of `seamfree submit` requeues a task that exits with it)
EXIT_PAUSED = 75


# what a command does first, said before torch is imported (a second or two) so that the user sees it started
_STARTING = {"predict": "loading the model, describing it (receptive field, tile probe), then the tiles",
             "diagnose": "loading the model, describing it, then two tiled predictions, TED and exactness",
             "audit": "loading the model and describing it (receptive field, tile probe)",
             "train": "reading the configuration and the data", "recalibrate": "loading the model",
             "convert": "loading the model", "export": "loading the model and describing it",
             "demo": "training two small U-Nets (about 30 s on 2 cores), then diagnosing both",
             "study": "planning the runs",
             "segment": "labelling block by block, then joining the objects across block faces",
             "seams": "reading the prediction block by block, then searching its lines for a tile grid",
             "fix": "loading the model, its predictions of your images (the teacher), then the fix"}


def _first_line(args: argparse.Namespace) -> None:
    """The first line of every long command, at once: which command, on what, and what comes first."""
    what = _STARTING.get(str(getattr(args, "command", "")))
    if what is None:
        return
    operands = [str(getattr(args, name)) for name in ("model", "image", "prediction", "out")
                if getattr(args, name, None)]
    logging.getLogger("seamfree.cli").info("seamfree %s %s: %s…", args.command, " ".join(operands), what)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        # -q: no progress bar and no informational lines (warnings and errors still show)
        level=logging.DEBUG if args.verbose else logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    if not args.verbose:
        _quiet_libraries()
    _first_line(args)
    tune_cpu_allocator()  # before torch or any reader starts a thread
    try:
        return int(args.handler(args))
    except BrokenPipeError:  # `seamfree audit m.pt | head`: the reader left; not an error of ours
        _silence_stdout()
        return 0
    except Paused as exc:  # a stop signal (walltime, preemption): the batch in flight written, progress recorded
        print(f"seamfree {args.command}: {exc}", file=sys.stderr)
        return EXIT_PAUSED
    except KeyboardInterrupt:
        print(f"seamfree {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        message, status = describe_error(exc)
        print(f"seamfree {args.command}: error: {message}", file=sys.stderr)
        return status


# Libraries whose own logs (dask's cluster life, tornado's connections) say nothing a user acts on; --verbose
# shows them.
_CHATTY_LIBRARIES = ("distributed", "tornado", "asyncio", "bokeh", "fsspec", "aiohttp", "numcodecs")


def _quiet_libraries() -> None:
    """Only errors from third-party libraries, here and in the dask workers this command starts (they read the
    environment when they import distributed)."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not raise again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# Libraries whose exceptions come from reading the user's files or configuration (bad input, exit 2).
_INPUT_LIBRARIES = ("yaml", "tifffile", "zarr", "numcodecs", "h5py", "imagecodecs", "PIL", "imageio")

_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device while writing {where}: free space there or choose another output "
                  "folder, then rerun the same command to resume",
    errno.EDQUOT: "disk quota exceeded while writing {where}: free space or choose another output folder",
    errno.EACCES: "permission denied for {where}: choose a path you can read (input) or write (output)",
    errno.EPERM: "operation not permitted on {where}: choose a path you can read (input) or write (output)",
    errno.EROFS: "{where} is on a read-only file system: choose an output folder you can write",
    errno.ENOENT: "{where} does not exist: check the path",
    errno.EISDIR: "{where} is a folder where a file was expected: check the path",
    errno.ENOTDIR: "a part of {where} is not a folder: check the path",
}


def describe_error(exc: BaseException) -> tuple[str, int]:
    """Return the one-line message and the exit status for an exception that ended a command.

    seamfree's own errors, argument errors, file-system errors and errors of the libraries that read the user's
    files are bad input (status 2). Anything else is a bug of seamfree or of a library: one line naming the
    exception and asking for ``--verbose`` (status 1).
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, SeamfreeError | argparse.ArgumentTypeError):
        return text, EXIT_BAD_INPUT
    if isinstance(exc, OSError):
        where = repr(exc.filename) if exc.filename else "a file"
        template = _OS_ERRORS.get(exc.errno or 0)
        if template is not None:
            return template.format(where=where), EXIT_BAD_INPUT
        return f"{type(exc).__name__} on {where}: {exc.strerror or text}", EXIT_BAD_INPUT
    if type(exc).__module__.split(".")[0] in _INPUT_LIBRARIES:
        return f"cannot read the input or configuration ({type(exc).__name__}: {text})", EXIT_BAD_INPUT
    return (f"unexpected {type(exc).__name__}: {text}; rerun with --verbose for the traceback and please report it",
            EXIT_UNEXPECTED)


__all__ = ["build_parser", "describe_error", "main"]

if __name__ == "__main__":
    sys.exit(main())
