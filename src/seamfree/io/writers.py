"""Prediction outputs: in-memory arrays, OME-Zarr (default for paths) and TIFF, resumable.

A path output records a *fingerprint* of input, model and settings, and one *done marker* per written block,
created only after the block's data is fully written. A rerun with the same output and the same fingerprint
skips the blocks marked done; a different fingerprint, shape or dtype is an error, never a silent overwrite.
Until the last block is written the output says it is incomplete: an OME-Zarr group carries
``seamfree.status = "incomplete"``, a TIFF is written under ``NAME.partial.tif`` and renamed at the end.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.errors import ConfigError, OutputExistsError, ShapeError, require
from seamfree.io.markers import (
    MARKER_DIR,
    ArrayOutput,
    MarkedOutput,
    OutputTarget,
    block_digest,
    refuse_foreign_side_path,
)
from seamfree.io.ome import Calibration, TimeCalibration, ome_tiff_metadata
from seamfree.io.safety import (
    SIGNATURE_TAG,
    TIFF_SIGNATURE,
    check_not_input,
    fingerprint_digest,
    is_seamfree_tiff,
    remove_own_output,
    resolved_path,
    tiff_signature,
)
from seamfree.io.zarr_output import ZarrBlockWriter, ZarrOutput, seamfree_attrs

__all__ = [
    "ArrayOutput",
    "FrameTarget",
    "OutputTarget",
    "TiffOutput",
    "ZarrBlockWriter",
    "ZarrOutput",
    "block_digest",
    "check_not_input",
    "check_target",
    "create_output",
    "frame_target",
    "output_format",
    "recorded_fingerprint",
    "resolved_path",
]

logger = logging.getLogger(__name__)

class TiffOutput(MarkedOutput):
    """An OME-TIFF (BigTIFF) written through a memory map under ``NAME.partial.tif``, renamed when complete.

    Its OME-XML carries the axes, the physical pixel sizes and units of ``calibration`` and the channel names;
    a private tag carries seamfree's signature (the fingerprint's digest).
    """

    def __init__(
        self, path: Path, *, shape: tuple[int, ...], dtype: np.dtype, fingerprint: dict[str, Any],
        overwrite: bool = False, calibration: Calibration | None = None,
        channel_names: Sequence[str] | None = None, time: TimeCalibration | None = None,
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
            if self.array.size == math.prod(self.shape):  # OME series squeeze a single channel: a view of ours
                self.array = self.array.reshape(self.shape)
            if self.array.shape != self.shape or self.array.dtype != self.dtype:
                raise OutputExistsError(f"partial output {str(self.partial)!r} has another shape or dtype; "
                                        "delete it or pass --overwrite")
        else:
            refuse_foreign_side_path(self.partial, ours=is_seamfree_tiff(self.partial))
            refuse_foreign_side_path(self.marker_root, ours=(self.marker_root / "fingerprint.json").is_file())
            shutil.rmtree(self.marker_root, ignore_errors=True)
            try:
                self.array = tifffile.memmap(  # type: ignore[attr-defined]
                    str(self.partial), shape=self.shape, dtype=self.dtype, bigtiff=True, ome=True,
                    metadata=self._metadata(calibration, channel_names, time),
                    extratags=[(SIGNATURE_TAG, "s", 0, f"{TIFF_SIGNATURE}:{fingerprint_digest(fingerprint)}", True)],
                )
                _reserve(self.partial)
            except OSError:
                self.partial.unlink(missing_ok=True)  # ours, just created: nothing of the user's is lost
                raise
        self._init_markers(fingerprint)

    def _metadata(self, calibration: Calibration | None, channel_names: Sequence[str] | None,
                  time: TimeCalibration | None) -> dict[str, Any]:
        if time is None:
            return ome_tiff_metadata(len(self.shape) - 1, self.shape[0], calibration, planes=self.shape[1],
                                     channel_names=channel_names)
        return ome_tiff_metadata(len(self.shape) - 2, self.shape[1], calibration, planes=self.shape[2],
                                 channel_names=channel_names, frames=self.shape[0], time=time)

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

    def mark_done(self, block: Sequence[int], record: dict[str, Any] | None = None) -> None:
        self.array.flush()  # msync: the block's pages are on the disk before its marker is
        super().mark_done(block, record)

    def finalize(self) -> Any:
        if not self.finished:
            self.array.flush()
            del self.array
            os.replace(self.partial, self.path)
        shutil.rmtree(self.marker_root, ignore_errors=True)
        return self.path


def _check_free_space(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Warn when the output's uncompressed size exceeds the free space of its file system (a TIFF reserves its
    size when created, so it then fails at once with ENOSPC instead of in the middle)."""
    needed = math.prod(shape) * np.dtype(dtype).itemsize
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        logger.warning("the output %s may not fit: %s uncompressed, %s free on its file system (OME-Zarr "
                       "compresses; a full disk stops the run cleanly, and a rerun resumes it)", path,
                       _size(needed), _size(free))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _reserve(path: Path) -> None:
    """Allocate the whole file now: a memory map over a sparse file on a full disk dies of SIGBUS later."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as exc:
            code = exc.errno or errno.EIO
            if code not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without fallocate stay sparse
                raise OSError(code, f"{os.strerror(code)} (reserving {_size(size)} for the TIFF output)",
                              str(path)) from exc


def recorded_fingerprint(target: Any) -> dict[str, Any] | None:
    """The fingerprint recorded by an earlier run into the output ``target`` (a path): its markers' (a run under
    way or interrupted) or an OME-Zarr's attributes (a complete one); None for anything else."""
    if not isinstance(target, str | os.PathLike) or "://" in str(target):
        return None
    path = Path(target)
    try:
        stored = json.loads((path.with_name(path.name + MARKER_DIR) / "fingerprint.json").read_text())
    except (OSError, ValueError):
        mark = seamfree_attrs(path) if path.is_dir() else None
        stored = mark.get("fingerprint") if mark else None
    return stored if isinstance(stored, dict) else None


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


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def check_target(target: Any) -> None:
    """ConfigError for an output that cannot be one, said before any work: bytes, an empty name, a folder such
    as ``.`` or ``/``, a read-only array or an object that is no array."""
    if target is None:
        return
    if isinstance(target, bytes | bytearray):
        raise ConfigError(f"the output must be a path (str or pathlib.Path) or an array, got bytes {target[:60]!r}; "
                          "decode it first, e.g. output.decode()")
    if isinstance(target, str | os.PathLike):
        text = os.fspath(target)
        if isinstance(text, str) and _URL.match(text):  # also one that pathlib made "s3:/bucket/..."
            raise ConfigError(f"the output {text!r} is a URL: seamfree writes outputs (with their locks and resume "
                              "records) to a file system, which may be shared by every task (NFS, Lustre, GPFS, a "
                              "mounted bucket); inputs may be URLs (s3://, https://). Write to a path, then copy it "
                              "to object storage (e.g. aws s3 sync OUT.zarr s3://bucket/OUT.zarr)")
        name = Path(text).name
        if isinstance(text, bytes) or not name or name in (".", "..") or text.endswith(("/", os.sep)):
            raise ConfigError(f"the output {text!r} names a folder, not an output: pass a new path inside it, "
                              "e.g. prediction.zarr or prediction.tif")
        return
    if not hasattr(target, "shape") or not hasattr(target, "dtype"):
        raise ConfigError(f"the output must be a path or an array (numpy, zarr), got a {type(target).__name__}")
    flags = getattr(target, "flags", None)
    if flags is not None and not getattr(flags, "writeable", True):
        raise ConfigError("the output array is read-only (its flags.writeable is False); pass a writable array, "
                          "e.g. numpy.zeros(shape, dtype), or a path")
    read_only = getattr(target, "read_only", None)
    if read_only is True:
        raise ConfigError("the output array is read-only (opened with mode 'r'); open it with mode 'r+' or 'a'")


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
    calibration: Calibration | None = None,
    time: TimeCalibration | None = None,
    **zarr_options: Any,
) -> OutputTarget:
    """Return the output for ``target``: None (a new numpy array), an array, or a .zarr/.tif path.

    A path that is the input (``input_path``), lies inside it or contains it is refused. With ``overwrite``,
    an existing path is deleted only if seamfree wrote it (a fingerprinted OME-Zarr, a signed TIFF), never
    through a symbolic link; anything else is refused with a message that says what is there.
    ``zarr_options`` (pyramid, labels, channel names, NGFF version, sharding) go to :class:`ZarrOutput`.
    ``time``: the output of a time series, ``shape`` ``(T, C, *spatial)`` and ``chunks`` the spatial core; write
    each frame through :class:`FrameTarget`.
    """
    if target is None:
        return ArrayOutput(np.zeros(shape, dtype=dtype))
    check_target(target)
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
    _check_free_space(path, shape, dtype)
    if output_format(path) == "tiff":
        return TiffOutput(path, shape=shape, dtype=dtype, fingerprint=fingerprint, overwrite=overwrite,
                          calibration=calibration or Calibration(scale),
                          channel_names=zarr_options.get("channel_names"), time=time)
    return ZarrOutput(path, shape=shape, dtype=dtype, chunks=chunks, fingerprint=fingerprint,
                      calibration=calibration or Calibration(scale), overwrite=overwrite, time=time, **zarr_options)


class _FrameView:
    """Frame ``t`` of an array ``(T, ...)``, indexed like an array ``(...)``: every read and write goes there."""

    def __init__(self, array: Any, t: int) -> None:
        self.array, self.t = array, int(t)
        self.shape = tuple(int(s) for s in array.shape[1:])
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key: Any) -> Any:
        return self.array[(self.t, *(key if isinstance(key, tuple) else (key,)))]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[(self.t, *(key if isinstance(key, tuple) else (key,)))] = value


class FrameTarget(MarkedOutput):
    """Frame ``t`` of a time-series path output, seen as the ``(C, *spatial)`` output of one image.

    Its blocks' done markers live in the series' marker folder under ``t<t>/``, so that a resume verifies and
    skips each frame's blocks like those of a single image; the series is finalized once, after its last frame.
    """

    def __init__(self, series: MarkedOutput, t: int) -> None:
        self.series, self.t = series, int(t)
        self.array = _FrameView(series.array, t)
        self.shape = tuple(int(s) for s in series.shape[1:])
        self.dtype = series.dtype
        self.marker_root = series.marker_root / f"t{t}"
        (self.marker_root / "done").mkdir(parents=True, exist_ok=True)

    @property
    def location(self) -> Path:
        return self.series.location

    def is_done(self, block: Sequence[int]) -> bool:
        return bool(getattr(self.series, "finished", False)) or super().is_done(block)

    def mark_done(self, block: Sequence[int], record: dict[str, Any] | None = None) -> None:
        flush = getattr(self.series.array, "flush", None)
        if callable(flush):  # a TIFF memory map: the block's pages reach the disk before its marker
            flush()
        super().mark_done(block, record)

    def finalize(self) -> Any:
        raise NotImplementedError("a frame is finalized with its series (finalize the series output)")


def frame_target(series: OutputTarget, t: int) -> OutputTarget:
    """The output of frame ``t`` of the time-series output ``series`` (a view of an in-memory one)."""
    if isinstance(series, MarkedOutput):
        return FrameTarget(series, t)
    return ArrayOutput(series.array[t])
