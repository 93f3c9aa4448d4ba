"""Prediction outputs: in-memory arrays, OME-Zarr (default for paths) and TIFF, resumable.

A path output records a *fingerprint* of input, model and settings, and one *done marker* per written block,
created only after the block's data is fully written. A rerun with the same output and the same fingerprint
skips the blocks marked done; a different fingerprint, shape or dtype is an error, never a silent overwrite.
Until the last block is written the output says it is incomplete: an OME-Zarr group carries
``seamfree.status = "incomplete"``, a TIFF is written under ``NAME.partial.tif`` and renamed at the end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.errors import ConfigError, OutputExistsError, ShapeError, require
from seamfree.io.safety import (
    TIFF_SIGNATURE,
    check_not_input,
    fingerprint_digest,
    is_seamfree_tiff,
    remove_own_output,
    resolved_path,
    tiff_signature,
)

__all__ = ["ArrayOutput", "OutputTarget", "TiffOutput", "ZarrBlockWriter", "ZarrOutput", "check_not_input",
           "create_output", "output_format", "resolved_path"]

logger = logging.getLogger(__name__)

MARKER_DIR = ".seamfree"
# Fingerprint keys added after the first release (absent from older outputs, which still resume).
ADDED_KEYS = ("runtime", "model_output")


def _block_name(block: Sequence[int]) -> str:
    return "_".join(str(int(i)) for i in block)


class OutputTarget:
    """Where predictions go: ``write`` regions, mark blocks done, ``finalize`` at the end."""

    shape: tuple[int, ...]
    dtype: np.dtype
    array: Any

    def write(self, window: Sequence[slice], data: np.ndarray) -> None:
        """Write ``data``, shape ``(C, *window)``, into the spatial ``window`` of ``self.array``."""
        self._check(window, data)
        self.array[(slice(None), *window)] = data

    def is_done(self, block: Sequence[int]) -> bool:
        raise NotImplementedError

    def mark_done(self, block: Sequence[int]) -> None:
        raise NotImplementedError

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

    def mark_done(self, block: Sequence[int]) -> None:
        self._done.add(tuple(block))

    def finalize(self) -> Any:
        return self.array


class _MarkedOutput(OutputTarget):
    """Shared done-marker logic of path outputs: one empty file per finished block."""

    marker_root: Path

    def _init_markers(self, fingerprint: dict[str, Any]) -> None:
        (self.marker_root / "done").mkdir(parents=True, exist_ok=True)
        path = self.marker_root / "fingerprint.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if isinstance(stored.get("input"), dict):  # earlier versions stored the path as it was typed
                stored["input"]["path"] = resolved_path(stored["input"].get("path"))
            # keys that earlier versions did not record are not compared: their outputs still resume
            fingerprint_now = {k: v for k, v in fingerprint.items() if k in stored or k not in ADDED_KEYS}
            if stored != fingerprint_now:
                changed = sorted(k for k in set(stored) | set(fingerprint_now)
                                 if stored.get(k) != fingerprint_now.get(k))
                raise OutputExistsError(
                    f"{str(self.location)!r} holds a prediction made with different {', '.join(changed)}"
                    f"{_differences(stored, fingerprint_now)}; refusing to resume into it. Rerun with the same "
                    "settings, use a new output path, or replace it (CLI: --overwrite)"
                )
            done = sum(1 for _ in (self.marker_root / "done").iterdir())
            logger.info("resuming %s: %d blocks already done", self.location, done)
        else:
            _atomic_write_text(path, json.dumps(fingerprint, sort_keys=True, indent=1))

    @property
    def location(self) -> Path:
        raise NotImplementedError

    def is_done(self, block: Sequence[int]) -> bool:
        return (self.marker_root / "done" / _block_name(block)).exists()

    def mark_done(self, block: Sequence[int]) -> None:
        (self.marker_root / "done" / _block_name(block)).touch()


def _differences(stored: dict[str, Any], now: dict[str, Any]) -> str:
    """Return ``" (grid.halo [112, 112] there, [96, 96] now; ...)"`` for the short values that differ."""
    parts = []
    for key in ("grid", "settings", "runtime", "activation"):
        old, new = stored.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            parts += [f"{key}.{name} {old.get(name)} there, {new.get(name)} now" for name in sorted(set(old) | set(new))
                      if old.get(name) != new.get(name)]
        elif old != new:
            parts.append(f"{key} {old} there, {new} now")
    return f" ({'; '.join(parts[:4])})" if parts else ""


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class ZarrOutput(_MarkedOutput):
    """An OME-Zarr (zarr v3, OME-NGFF 0.5) image with one level, chunks aligned with the tile cores."""

    def __init__(
        self,
        path: Path,
        *,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunks: tuple[int, ...],
        fingerprint: dict[str, Any],
        scale: tuple[float, ...] | None = None,
        overwrite: bool = False,
    ) -> None:
        zarr = require("zarr", "zarr")
        self.path = path
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.marker_root = path / MARKER_DIR
        if overwrite and path.exists():
            remove_own_output(path, written_by_seamfree=(path / MARKER_DIR / "fingerprint.json").is_file())
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # an empty folder: a creation killed before its first file (nothing to lose)
        if path.exists():
            self.group = self._reopen(zarr)
        else:
            # the group's metadata, seamfree's mark included, is one file written at once: a run killed at any
            # moment leaves either no group or one that says it is seamfree's and incomplete
            self.group = zarr.open_group(str(path), mode="w-", attributes={  # type: ignore[attr-defined]
                "ome": _ome_metadata(len(shape) - 1, scale), "seamfree": {"status": "incomplete"}})
        if "0" not in self.group:  # new, or a creation killed before its array
            self.group.create_array("0", shape=self.shape, dtype=self.dtype, chunks=(self.shape[0], *chunks),
                                    fill_value=0)
        self.array = self.group["0"]
        self._init_markers(fingerprint)

    @property
    def location(self) -> Path:
        return self.path

    def _reopen(self, zarr: Any) -> Any:
        try:
            group = zarr.open_group(str(self.path), mode="r+")
        except Exception as exc:  # not a zarr group at all
            raise OutputExistsError(
                f"output {str(self.path)!r} exists and is not a seamfree prediction; choose another path "
                "(seamfree never overwrites data it did not write; CLI --overwrite deletes it)"
            ) from exc
        if "seamfree" not in group.attrs:
            raise OutputExistsError(
                f"output {str(self.path)!r} exists and was not written by seamfree; choose another path "
                "or delete it (CLI --overwrite)"
            )
        if "0" not in group:
            return group
        array = group["0"]
        if tuple(array.shape) != self.shape or np.dtype(array.dtype) != self.dtype:
            raise OutputExistsError(
                f"output {str(self.path)!r} exists with shape {tuple(array.shape)} and dtype {array.dtype}, "
                f"this prediction needs shape {self.shape} and dtype {self.dtype}; use another path or "
                "delete it (CLI --overwrite)"
            )
        return group

    def finalize(self) -> Any:
        self.group.attrs["seamfree"] = {"status": "complete"}
        return self.array


class ZarrBlockWriter(_MarkedOutput):
    """Write access to an existing seamfree OME-Zarr output from another process (a dask worker).

    The driver creates the output and its fingerprint (:class:`ZarrOutput`); workers only write the chunks of
    their blocks and the blocks' done markers, and never change the metadata.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        zarr = require("zarr", "zarr")
        self.path = Path(path)
        self.marker_root = self.path / MARKER_DIR
        try:
            group = zarr.open_group(str(self.path), mode="r+")  # type: ignore[attr-defined]
            self.array = group["0"]
        except Exception as exc:
            raise OutputExistsError(f"cannot open the output {str(self.path)!r} for writing on this worker: {exc}; "
                                    "the output must be on storage every worker can reach") from exc
        self.shape = tuple(self.array.shape)
        self.dtype = np.dtype(self.array.dtype)

    @property
    def location(self) -> Path:
        return self.path


def _ome_metadata(spatial_dims: int, scale: tuple[float, ...] | None) -> dict[str, Any]:
    names = "zyx"[-spatial_dims:]
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space"} for n in names]
    scale_values = [1.0, *(scale or (1.0,) * spatial_dims)]
    return {
        "version": "0.5",
        "multiscales": [{
            "name": "seamfree prediction",
            "axes": axes,
            "datasets": [{"path": "0",
                          "coordinateTransformations": [{"type": "scale", "scale": scale_values}]}],
        }],
    }


class TiffOutput(_MarkedOutput):
    """A (Big)TIFF written through a memory map under ``NAME.partial.tif``, renamed when complete."""

    def __init__(
        self, path: Path, *, shape: tuple[int, ...], dtype: np.dtype, fingerprint: dict[str, Any],
        overwrite: bool = False,
    ) -> None:
        tifffile = require("tifffile", "tiff")
        self.path = path
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.partial = path.with_name(path.stem + ".partial" + path.suffix)
        self.marker_root = path.with_name(path.name + MARKER_DIR)
        if overwrite:
            if path.exists() or path.is_symlink():
                remove_own_output(path, written_by_seamfree=is_seamfree_tiff(path))
            if (self.marker_root / "fingerprint.json").is_file():  # a partial run of ours: its files go too
                self.partial.unlink(missing_ok=True)
                shutil.rmtree(self.marker_root)
        self.finished = False
        if path.exists() and self._finished_before(fingerprint):
            return  # renamed complete by a run killed before it removed its markers: nothing left to do
        if path.exists():
            raise OutputExistsError(f"output {str(path)!r} already exists; choose another path or pass --overwrite")
        if self.partial.exists() and (self.marker_root / "fingerprint.json").exists():
            self.array = tifffile.memmap(str(self.partial), mode="r+")  # type: ignore[attr-defined]
            if self.array.shape != self.shape or self.array.dtype != self.dtype:
                raise OutputExistsError(f"partial output {str(self.partial)!r} has another shape or dtype; "
                                        "delete it or pass --overwrite")
        else:
            shutil.rmtree(self.marker_root, ignore_errors=True)
            self.array = tifffile.memmap(  # type: ignore[attr-defined]
                str(self.partial), shape=self.shape, dtype=self.dtype, bigtiff=True,
                metadata={"axes": "C" + "ZYX"[-(len(shape) - 1):], TIFF_SIGNATURE: fingerprint_digest(fingerprint)},
            )
        self._init_markers(fingerprint)

    def _finished_before(self, fingerprint: dict[str, Any]) -> bool:
        """Whether ``path`` is the complete output of this very prediction (its signature is the fingerprint's
        digest): a rerun of a finished command, or of one killed between its rename and its last cleanup."""
        self.finished = tiff_signature(self.path) == fingerprint_digest(fingerprint)
        return self.finished

    @property
    def location(self) -> Path:
        return self.path if self.finished else self.partial

    def is_done(self, block: Sequence[int]) -> bool:
        return self.finished or super().is_done(block)

    def mark_done(self, block: Sequence[int]) -> None:
        self.array.flush()
        super().mark_done(block)

    def finalize(self) -> Any:
        if not self.finished:
            self.array.flush()
            del self.array
            os.replace(self.partial, self.path)
        shutil.rmtree(self.marker_root, ignore_errors=True)
        return self.path


def output_format(path: str | os.PathLike[str]) -> str:
    """Return ``"zarr"`` or ``"tiff"`` for an output path: .tif/.tiff is TIFF, .zarr (or no suffix) OME-Zarr.

    Any other suffix (.png, .npy, .h5, ...) is a ConfigError rather than a zarr folder under that name.
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".tif", ".tiff"):
        return "tiff"
    if suffix in ("", ".zarr"):
        return "zarr"
    raise ConfigError(f"seamfree cannot write an output named {str(path)!r} ({suffix}): use a .zarr path "
                      "(OME-Zarr, resumable, the default) or .tif/.tiff")


def create_output(
    target: str | os.PathLike[str] | np.ndarray | Any | None,
    *,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...],
    fingerprint: dict[str, Any],
    scale: tuple[float, ...] | None = None,
    overwrite: bool = False,
    input_path: str | None = None,
) -> OutputTarget:
    """Return the output for ``target``: None (a new numpy array), an array, or a .zarr/.tif path.

    A path that is the input (``input_path``), lies inside it or contains it is refused. With ``overwrite``,
    an existing path is deleted only if seamfree wrote it (a fingerprinted OME-Zarr, a signed TIFF), never
    through a symbolic link; anything else is refused with a message that says what is there.
    """
    if target is None:
        return ArrayOutput(np.zeros(shape, dtype=dtype))
    if not isinstance(target, str | os.PathLike):
        if tuple(target.shape) != tuple(shape) or np.dtype(target.dtype) != np.dtype(dtype):
            raise ShapeError(
                f"output array has shape {tuple(target.shape)} and dtype {target.dtype}; "
                f"this prediction needs shape {shape} and dtype {np.dtype(dtype)}"
            )
        return ArrayOutput(target)
    path = Path(target)
    check_not_input(path, input_path)
    if not path.parent.exists():
        raise OutputExistsError(f"the folder of output {str(path)!r} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise OutputExistsError(f"cannot write output {str(path)!r}: folder {str(path.parent)!r} is not writable")
    if output_format(path) == "tiff":
        return TiffOutput(path, shape=shape, dtype=dtype, fingerprint=fingerprint, overwrite=overwrite)
    return ZarrOutput(path, shape=shape, dtype=dtype, chunks=chunks, fingerprint=fingerprint, scale=scale,
                      overwrite=overwrite)
