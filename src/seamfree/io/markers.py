"""The output targets' common interface and the done markers of path outputs.

A *done marker* is one small file per written block, created only after the block's data is written (and, for a
TIFF memory map, synced). It records the block's window, the sha256 of its stored values and of the raw input it
was predicted from: a resume verifies each done block once, so a block whose data never reached the disk (a full
disk, a crash) or was corrupted since is predicted again instead of trusted, and so is a block whose input
changed. The *fingerprint* (input, model, settings) is compared before anything is resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.errors import OutputExistsError, ShapeError
from seamfree.io.safety import resolved_path

__all__ = ["ADDED_KEYS", "MARKER_DIR", "ArrayOutput", "MarkedOutput", "OutputTarget", "atomic_write_text",
           "block_digest", "check_fingerprint", "refuse_foreign_side_path"]

logger = logging.getLogger(__name__)

MARKER_DIR = ".seamfree"
# Fingerprint keys added after the first release (absent from older outputs, which still resume).
ADDED_KEYS = ("runtime", "model_output")


def _block_name(block: Sequence[int]) -> str:
    return "_".join(str(int(i)) for i in block)


def block_digest(data: np.ndarray) -> str:
    """sha256 of a block's values with its dtype and shape (what its done marker records)."""
    data = np.ascontiguousarray(data)
    digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    if data.size:
        digest.update(data.data.cast("B"))  # the array's own buffer: no bytes copy
    return digest.hexdigest()


class OutputTarget:
    """Where predictions go: ``write`` regions, mark blocks done, ``finalize`` at the end."""

    shape: tuple[int, ...]
    dtype: np.dtype
    array: Any
    records_inputs = False  # whether done markers keep the digest of each block's input

    def write(self, window: Sequence[slice], data: np.ndarray) -> None:
        """Write ``data``, shape ``(C, *window)``, into the spatial ``window`` of ``self.array``."""
        self._check(window, data)
        self.array[(slice(None), *window)] = data

    def is_done(self, block: Sequence[int]) -> bool:
        raise NotImplementedError

    def mark_done(self, block: Sequence[int], record: dict[str, Any] | None = None) -> None:
        """Mark ``block`` written; ``record`` (its window, data digest and input digest) lets a resume verify it."""
        raise NotImplementedError

    def input_digest(self, block: Sequence[int]) -> str | None:
        """The digest of the input a done block was predicted from (None: not recorded)."""
        return None

    def forget(self, block: Sequence[int]) -> None:  # in-memory outputs keep nothing to forget
        """Mark a done block as not done (its input changed): it is predicted again."""

    def finalize(self) -> Any:
        """Mark the output complete and return what ``predict`` gives back."""
        raise NotImplementedError

    def _check(self, window: Sequence[slice], data: np.ndarray) -> None:
        expected = (self.shape[0], *(s.stop - s.start for s in window))
        if data.shape != expected:
            raise ShapeError(f"block data of shape {data.shape} does not fit window {tuple(window)}")


class ArrayOutput(OutputTarget):
    """An in-memory (or user-provided, sliceable) array; progress lives only in memory."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self._done: set[tuple[int, ...]] = set()

    def is_done(self, block: Sequence[int]) -> bool:
        return tuple(block) in self._done

    def mark_done(self, block: Sequence[int], record: dict[str, Any] | None = None) -> None:
        self._done.add(tuple(block))

    def forget(self, block: Sequence[int]) -> None:
        self._done.discard(tuple(block))

    def finalize(self) -> Any:
        return self.array


def check_fingerprint(stored: dict[str, Any], fingerprint: dict[str, Any], location: Path,
                      what: str = "prediction") -> None:
    """OutputExistsError, naming what differs, unless ``stored`` (an output's) matches this run's ``fingerprint``."""
    stored = json.loads(json.dumps(stored))  # a copy, normalized below
    if isinstance(stored.get("input"), dict):  # earlier versions stored the path as it was typed
        stored["input"]["path"] = resolved_path(stored["input"].get("path"))
        if "sample_sha256" not in fingerprint.get("input", {}):  # crop outputs check blocks instead
            stored["input"].pop("sample_sha256", None)
    # keys that earlier versions did not record are not compared: their outputs still resume
    now = {k: v for k, v in fingerprint.items() if k in stored or k not in ADDED_KEYS}
    if stored != now:
        changed = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
        raise OutputExistsError(
            f"{str(location)!r} holds a {what} made with different {', '.join(changed)}"
            f"{_differences(stored, now)}; refusing to resume into it. Rerun with the same settings, use a new "
            "output path, or replace it (CLI: --overwrite)"
        )


class MarkedOutput(OutputTarget):
    """Shared done-marker logic of path outputs: one empty file per finished block."""

    marker_root: Path
    records_inputs = True

    def _init_markers(self, fingerprint: dict[str, Any]) -> None:
        refuse_foreign_side_path(self.marker_root, ours=any(  # segment keeps its passes' tables there first
            (self.marker_root / sub / "fingerprint.json").is_file() for sub in (".", "segment")))
        (self.marker_root / "done").mkdir(parents=True, exist_ok=True)
        path = self.marker_root / "fingerprint.json"
        if path.exists():
            check_fingerprint(json.loads(path.read_text()), fingerprint, self.location)
            done = sum(1 for _ in (self.marker_root / "done").iterdir())
            logger.info("resuming %s: %d blocks already done", self.location, done)
        else:
            atomic_write_text(path, json.dumps(fingerprint, sort_keys=True, indent=1))

    @property
    def location(self) -> Path:
        raise NotImplementedError

    def _marker(self, block: Sequence[int]) -> Path:
        return self.marker_root / "done" / _block_name(block)

    def _record(self, block: Sequence[int]) -> dict[str, Any] | None:
        """The marker's record; None without a marker, or for an empty one: a marker truncated by a crash or a full
        disk (or an unverifiable one of seamfree < 0.3) proves nothing, so its block is predicted again."""
        try:
            text = self._marker(block).read_text()
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            record = json.loads(text)
        except json.JSONDecodeError:  # a marker cut short: its block is not trusted
            return None
        return record if isinstance(record, dict) else None

    def is_done(self, block: Sequence[int]) -> bool:
        """Whether ``block`` is written, verified once per process against its marker's digest: a block whose data
        is missing or differs (a full disk, a crash before the data was durable, a corrupt chunk) is not done."""
        key = tuple(int(i) for i in block)
        verified: set[tuple[int, ...]] = self.__dict__.setdefault("_verified", set())
        if key in verified:
            return True
        record = self._record(block)
        if record is None:
            return False
        if not ("sha256" in record and "window" in record):
            logger.warning("the done marker of block %s of %s records no digest (truncated, or edited): predicting "
                           "it again", _block_name(block), self.location)
            return False
        try:
            window = tuple(slice(int(a), int(b)) for a, b in record["window"])
            present = block_digest(np.asarray(self.array[(slice(None), *window)]))
        except Exception:  # an unreadable (corrupt) chunk, or a window that is no window: not there
            present = None
        if present != record["sha256"]:
            logger.warning("block %s of %s does not hold the data its marker records (corrupt, or lost before "
                           "it reached the disk): predicting it again", _block_name(block), self.location)
            self._marker(block).unlink(missing_ok=True)
            return False
        verified.add(key)
        return True

    def mark_done(self, block: Sequence[int], record: dict[str, Any] | None = None) -> None:
        atomic_write_text(self._marker(block), "" if record is None else json.dumps(record), durable=True)

    def input_digest(self, block: Sequence[int]) -> str | None:
        record = self._record(block)
        value = None if record is None else record.get("input_sha256")
        return value if isinstance(value, str) else None

    def forget(self, block: Sequence[int]) -> None:
        self._marker(block).unlink(missing_ok=True)
        self.__dict__.setdefault("_verified", set()).discard(tuple(int(i) for i in block))


def refuse_foreign_side_path(path: Path, *, ours: bool) -> None:
    """OutputExistsError when ``path``, a name seamfree derives from an output (``NAME.seamfree`` markers,
    ``NAME.partial.tif``), holds something seamfree did not write: it would be written into, then deleted."""
    if ours or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return  # an empty folder: nothing to lose
    raise OutputExistsError(
        f"{str(path)!r} exists and was not written by seamfree, but seamfree keeps its own files under that name "
        "while writing the output beside it; move it away (or choose another output name) and run again")


def _differences(stored: dict[str, Any], now: dict[str, Any]) -> str:
    """Return ``" (grid.halo [112, 112] there, [96, 96] now; ...)"`` for the short values that differ."""
    parts = []
    for key in ("grid", "settings", "runtime", "activation", "normalization", "segment"):
        old, new = stored.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            parts += [f"{key}.{name} {old.get(name)} there, {new.get(name)} now" for name in sorted(set(old) | set(new))
                      if old.get(name) != new.get(name)]
        elif old != new:
            parts.append(f"{key} {old} there, {new} now")
    return f" ({'; '.join(parts[:4])})" if parts else ""


def atomic_write_text(path: Path, text: str, *, durable: bool = False) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename; ``durable``: fsync it first."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)
