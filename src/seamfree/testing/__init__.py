"""Helpers for seamfree's own tests and for users' tests: hypothesis strategies, reproducible models."""

from seamfree.testing.models import randomize_norm_statistics
from seamfree.testing.outputs import read_output

__all__ = ["randomize_norm_statistics", "read_output"]
