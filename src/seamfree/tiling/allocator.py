"""Deprecated location of :mod:`seamfree.allocator` (deleted in seamfree 0.2.0, ``_version.REMOVED_IN``)."""

from seamfree.allocator import ALLOCATOR_ENVIRONMENT, allocator_environment, tune_cpu_allocator

__all__ = ["ALLOCATOR_ENVIRONMENT", "allocator_environment", "tune_cpu_allocator"]
