"""Deprecated location of :mod:`seamfree.allocator` (kept for one release)."""

from seamfree.allocator import ALLOCATOR_ENVIRONMENT, allocator_environment, tune_cpu_allocator

__all__ = ["ALLOCATOR_ENVIRONMENT", "allocator_environment", "tune_cpu_allocator"]
