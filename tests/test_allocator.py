"""The glibc allocator settings: large temporaries stay mapped between tiles instead of faulting back in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from seamfree.allocator import ALLOCATOR_ENVIRONMENT, allocator_environment

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings are Linux-only")

# Allocate, touch and free a 64 MB block five times; count the page faults of the last four. A fresh mapping
# faults in each of its pages (16384 of 4 KiB, or 32 huge pages of 2 MiB, which numpy asks for); memory the
# allocator kept faults in none.
FRESH = 4 * 32
PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from seamfree.allocator import tune_cpu_allocator
    applied = tune_cpu_allocator() if sys.argv[1] == "tuned" else False
    def touch():
        block = np.empty(64 * 2**20, dtype=np.uint8)
        block.fill(1)
        del block
    touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        touch()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str, **environ: str) -> tuple[str, int]:
    env = {**os.environ, **environ}
    if "SEAMFREE_ALLOCATOR" not in environ:
        env.pop("SEAMFREE_ALLOCATOR", None)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


def test_tuned_allocator_keeps_large_blocks_instead_of_faulting_them_in_again():
    applied, tuned = _faults("tuned")
    _, system = _faults("system")
    assert applied == "True"
    assert system >= FRESH  # every block mapped afresh
    assert tuned < 16


def test_system_allocator_can_be_chosen_by_environment(monkeypatch):
    applied, faults = _faults("tuned", SEAMFREE_ALLOCATOR="system")
    assert applied == "False" and faults >= FRESH
    monkeypatch.setenv("SEAMFREE_ALLOCATOR", "system")
    assert allocator_environment() == {}
    monkeypatch.setenv("SEAMFREE_ALLOCATOR", "tuned")
    assert allocator_environment() == ALLOCATOR_ENVIRONMENT and ALLOCATOR_ENVIRONMENT["MALLOC_ARENA_MAX"] == "1"
