"""Exceptions raised by seamfree.

Every class also subclasses the matching builtin (``ValueError``, ``TypeError``, ...) so that callers who
catch the builtin keep working, while ``except SeamfreeError`` catches everything the library raises on
purpose. Messages say what was wrong, the value received and how to fix it.
"""

from __future__ import annotations


class SeamfreeError(Exception):
    """Base class of every error seamfree raises on purpose."""


class ConfigError(SeamfreeError, ValueError):
    """An option or configuration value is invalid (unknown name, out of range, inconsistent)."""


class ShapeError(SeamfreeError, ValueError):
    """An array has the wrong number of dimensions, channels or an unsupported size."""


class HaloError(SeamfreeError, ValueError):
    """A halo is too small for the receptive field, or too large for the core and image."""


class DataError(SeamfreeError, ValueError):
    """Input data is unusable: NaN/Inf values, unsupported dtype, missing dataset files."""


class CheckpointError(SeamfreeError, ValueError):
    """A model file cannot be read or does not describe a model seamfree can rebuild."""


class OutputExistsError(SeamfreeError, FileExistsError):
    """An output already exists and is incompatible with the requested one (never overwritten silently)."""


class NotFixableError(SeamfreeError, ValueError):
    """A model's tile dependence does not come from normalization layers a fix can replace (global pooling,
    attention), or its layers cannot be replaced (a compiled TorchScript graph)."""


class MissingDependencyError(SeamfreeError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that provides it."""


class Paused(SeamfreeError):
    """A run stopped on request (SIGTERM, SIGINT, SIGUSR1: a walltime or a preemption) after writing the batch in
    flight and recording its progress; rerunning the same command resumes it. ``done``/``total``: its units."""

    def __init__(self, message: str, done: int = 0, total: int = 0) -> None:
        super().__init__(message)
        self.done, self.total = done, total


def require(module: str, extra: str) -> object:
    """Return the imported optional ``module`` or raise MissingDependencyError naming the pip ``extra``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"this feature needs the optional package {module!r}, which is not installed; "
            f"install it with: pip install 'seamfree[{extra}]'"
        ) from exc
