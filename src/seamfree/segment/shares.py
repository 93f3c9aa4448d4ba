"""A segmentation split among the tasks of a job array (``segment --shard I/N``): the share of each task in the
first blockwise pass, and the hand-over of the rest to the task that finishes the last share."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seamfree.errors import OutputExistsError
from seamfree.io.pyramid import Runner
from seamfree.tiling.shards import Shard

__all__ = ["ShareRunner", "SharesPending", "share_of"]


class SharesPending(Exception):
    """This task's share of the first pass is done; others are not (their tasks complete the labels)."""


@dataclass
class ShareRunner:
    """Runs the share ``shard`` of the first blockwise pass, then (if every share of it is done and ``claim`` gets
    the output's lock) every later pass alone; raises SharesPending otherwise."""

    shard: Shard
    folder: Path
    base: Runner
    claim: Any
    calls: int = 0

    def __call__(self, task: Any, batches: list[list[Any]]) -> None:
        self.calls += 1
        if self.calls > 1:
            self.base(task, batches)
            return
        jobs = [job for batch in batches for job in batch]
        shares = [share_of(job, self.shard.count) for job in jobs]
        mine = [job for job, share in zip(jobs, shares) if share == self.shard.index]
        self.base(task, [mine[i:i + 4] for i in range(0, len(mine), 4)])
        self.folder.mkdir(parents=True, exist_ok=True)
        for share in {self.shard.index} | (set(range(self.shard.count)) - set(shares)):
            (self.folder / f"{share}.done").touch()  # this one, and those with nothing left in the pass
        left = [i for i in range(self.shard.count) if not (self.folder / f"{i}.done").exists()]
        if left:
            raise SharesPending(f"shard {self.shard}: its {len(mine)} blocks of the first pass are labelled; "
                                f"{len(left)} of {self.shard.count} shares still to do (e.g. {left[0]}): the task "
                                "that finishes the last one joins the objects and writes the labels")
        try:
            self.claim()
        except OutputExistsError:
            raise SharesPending(f"shard {self.shard}: every share of the first pass is done; another task joins "
                                "the objects and writes the labels") from None


def share_of(job: Any, count: int) -> int:
    """The share of a block job: a hash of what names it, the same in every task."""
    return zlib.crc32(repr(job).encode()) % count
