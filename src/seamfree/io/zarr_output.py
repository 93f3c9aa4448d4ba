"""OME-Zarr outputs: the resumable block writer of a prediction, its pyramid, its labels, its metadata.

Layout of an output ``NAME.zarr`` (NGFF 0.5, zarr v3; ``ngff="0.4"`` writes the same in zarr v2):

- ``0``: level 0, ``(C, *spatial)``. Its *shards* are the tile cores, so one writer (one task of a dask run)
  owns each shard, and its inner *chunks* are viewer sized (256² in 2D, 64³ in 3D, or the largest divisors of the
  core below that), so that a viewer fetches little per screen. A core no larger than a viewer chunk is one plain
  chunk.
- ``1``, ``2``, ...: the multiscale pyramid (:mod:`seamfree.io.pyramid`), written after level 0 is complete.
- With ``labels_from`` (CLI ``--labels``): ``labels/mask``, an OME-Zarr label image (napari opens a Labels layer)
  computed block by block from the probabilities of level 0, with its own pyramid (every second voxel).
- A mask output (``label_values``) is itself a label image: ``image-label`` metadata on the root group.

The group's attributes carry the OME metadata (the input's calibration, channel names), seamfree's status and the
run's fingerprint; the done markers live beside the store while it is written (``NAME.zarr.seamfree``, outside the
hierarchy, so zarr lists nothing it does not recognise) and are removed when it is complete. Every pass after
level 0 is resumable through its own markers.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.errors import OutputExistsError, require
from seamfree.io.markers import MARKER_DIR, MarkedOutput, check_fingerprint
from seamfree.io.ome import Calibration, TimeCalibration, dimension_names, labels_group_attrs, ome_image_attrs
from seamfree.io.pyramid import Downsampling, Runner, block_key, blocks, local_path, write_pyramid
from seamfree.io.safety import remove_own_output

__all__ = ["VIEWER_CHUNK", "ZarrBlockWriter", "ZarrOutput", "foreign_entries", "is_seamfree_zarr",
           "refuse_foreign_entries", "viewer_chunks", "zarr_markers"]

logger = logging.getLogger(__name__)

# the edge of an inner chunk a viewer fetches, by spatial dimensions (a 256 KiB float32 chunk in both cases)
VIEWER_CHUNK = {2: 256, 3: 64}
LABELS_NAME = "mask"


def zarr_markers(path: Path) -> Path:
    """Where an OME-Zarr output's fingerprint and done markers live while it is written: beside it
    (``NAME.zarr.seamfree``), outside the zarr hierarchy, which then holds nothing zarr does not recognise."""
    return path.with_name(path.name + MARKER_DIR)


def viewer_chunks(core: Sequence[int], edge: int | None = None) -> tuple[int, ...]:
    """Inner chunks for shards of shape ``core``: per axis, the largest divisor of the core's extent that is at
    most the viewer chunk's edge (a shard must hold a whole number of chunks).

    Examples
    --------
    >>> viewer_chunks((1024, 1024))
    (256, 256)
    >>> viewer_chunks((32, 128, 88))
    (32, 64, 44)
    """
    edge = edge or VIEWER_CHUNK.get(len(core), 64)
    return tuple(max(d for d in range(1, min(int(c), edge) + 1) if int(c) % d == 0) for c in core)


def _group_attributes(path: Path) -> dict[str, Any]:
    for name, nested in (("zarr.json", True), (".zattrs", False)):
        try:
            document = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        attrs = document.get("attributes", {}) if nested else document
        return attrs if isinstance(attrs, dict) else {}
    return {}


def seamfree_attrs(path: Path) -> dict[str, Any] | None:
    """seamfree's attributes of the zarr group at ``path`` (None: not a group seamfree wrote)."""
    mark = _group_attributes(path).get("seamfree")
    return mark if isinstance(mark, dict) else None


def is_seamfree_zarr(path: Path) -> bool:
    """Whether ``path`` is an OME-Zarr output seamfree wrote (its fingerprint in the group's attributes, or the
    marker folder inside it that versions before 0.3 kept)."""
    mark = seamfree_attrs(path)
    return (mark is not None and "fingerprint" in mark) or (path / MARKER_DIR / "fingerprint.json").is_file()


_METADATA = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata"})


def _own_group(path: Path, own_children: Callable[[Path], bool]) -> list[str]:
    """The entries of the zarr group ``path`` that are neither metadata nor children ``own_children`` accepts."""
    return [entry.name for entry in sorted(path.iterdir())
            if entry.name not in _METADATA and not (entry.is_dir() and own_children(entry))]


def foreign_entries(path: Path) -> list[str]:
    """What a user added inside the seamfree OME-Zarr ``path``: entries that are not its metadata, its pyramid
    levels (``0``, ``1``, ...), its legacy markers, ``labels/mask`` of ``--labels`` or a label image that
    ``seamfree segment`` wrote (each of those carries seamfree's mark). ``--overwrite`` refuses while any exist."""
    if not path.is_dir() or path.is_symlink():
        return []

    def level(entry: Path) -> bool:
        return entry.name.isdigit() and not entry.is_symlink()

    found = [name for name in _own_group(path, lambda e: level(e) or e.name in (MARKER_DIR, "labels"))]
    labels = path / "labels"
    if labels.is_dir() and not labels.is_symlink():
        found += [f"labels/{name}" for name in _own_group(labels, lambda e: not e.is_symlink() and (
            is_seamfree_zarr(e) or (e.name == LABELS_NAME and not _own_group(e, level))))]
    return found


def refuse_foreign_entries(path: Path) -> None:
    """OutputExistsError naming what a user added inside the seamfree output ``path`` (see :func:`foreign_entries`)."""
    found = foreign_entries(path)
    if found:
        shown = ", ".join(repr(n) for n in found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise OutputExistsError(
            f"output {str(path)!r} is a seamfree prediction that also holds {shown}, which seamfree did not write; "
            "--overwrite replaces only what seamfree wrote: move those entries out (or write to another path) "
            "and run again")


class ZarrOutput(MarkedOutput):
    """An OME-Zarr image written block by block (one block = one tile core = one shard), resumable.

    Parameters beyond the array's: ``calibration`` (scale, translation, units), ``pyramid`` and its
    ``downsampling``, ``channel_names`` (the ``omero`` block), ``label_values`` (a mask output: the root is a
    label image with that many values), ``labels_from`` (a function from a block of level 0 to its mask: writes
    ``labels/mask``), ``ngff`` ("0.5" or "0.4"), ``sharding`` (off: chunks are the cores), ``time`` (a time
    series: the array is ``(T, C, *spatial)``, one frame per shard along t, a ``t`` axis in the metadata) and
    ``markers`` (where the done markers live while it is written; default beside it, ``NAME.zarr.seamfree``).
    """

    def __init__(
        self,
        path: Path,
        *,
        shape: tuple[int, ...],
        dtype: np.dtype,
        chunks: tuple[int, ...],
        fingerprint: dict[str, Any],
        calibration: Calibration | None = None,
        overwrite: bool = False,
        pyramid: bool = True,
        downsampling: Downsampling = "mean",
        channel_names: Sequence[str] | None = None,
        label_values: int | None = None,
        labels_from: Callable[[np.ndarray], np.ndarray] | None = None,
        ngff: str = "0.5",
        sharding: bool = True,
        time: TimeCalibration | None = None,
        markers: Path | None = None,
    ) -> None:
        zarr = require("zarr", "zarr")
        self.path = path
        self.time = time
        self.lead = 2 if time is not None else 1  # the axes before the spatial ones: (T,) C
        self.calibration, self.pyramid, self.downsampling = calibration, pyramid, downsampling
        self.channel_names = list(channel_names) if channel_names else None
        self.label_values, self.labels_from, self.ngff = label_values, labels_from, ngff
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.fingerprint = fingerprint
        self.summary: dict[str, Any] | None = None
        self.marker_root = markers or zarr_markers(path)
        if overwrite and (path.exists() or path.is_symlink()):
            if is_seamfree_zarr(path):
                refuse_foreign_entries(path)
            remove_own_output(path, written_by_seamfree=is_seamfree_zarr(path))
        if overwrite and (self.marker_root / "fingerprint.json").is_file():
            shutil.rmtree(self.marker_root)  # the markers of a run of ours into that output
        if overwrite:  # the labels' markers of segment runs on the prediction replaced: stale with it
            for labels in path.parent.glob(f"{glob.escape(path.name)}.seamfree-labels-*"):
                if labels.is_dir() and not labels.is_symlink() and any(
                        (labels / sub / "fingerprint.json").is_file() for sub in (".", "segment")):
                    shutil.rmtree(labels)
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # an empty folder: a creation killed before its first file (nothing to lose)
        legacy = path / MARKER_DIR
        if legacy.is_dir() and not self.marker_root.exists():
            os.replace(legacy, self.marker_root)  # written by seamfree < 0.3: markers move out of the hierarchy
            logger.info("moved the done markers of %s out of the zarr hierarchy to %s", path, self.marker_root)
        if path.exists():
            self.group = self._reopen(zarr)
        else:
            # the group's metadata, seamfree's mark included, is one file written at once: a run killed at any
            # moment leaves either no group or one that says it is seamfree's and incomplete
            self.group = zarr.open_group(str(path), mode="w-", zarr_format=self._format,  # type: ignore[attr-defined]
                                         attributes=self._attributes(1, "incomplete"))
        if "0" not in self.group:  # new, or a creation killed before its array
            first = (1, self.shape[1]) if time is not None else (self.shape[0],)  # a frame, every channel
            core = (*first, *chunks)
            inner = (*first, *viewer_chunks(chunks)) if sharding and ngff == "0.5" else core
            self.group.create_array("0", shape=self.shape, dtype=self.dtype, fill_value=0, **_layout(
                core, inner, ngff, dimension_names(self.spatial_dims, time is not None)))
        self.array = self.group["0"]
        mark = dict(self.group.attrs.get("seamfree", {}))
        self.finished = mark.get("status") == "complete" and "fingerprint" in mark and not self.marker_root.exists()
        if self.finished:
            check_fingerprint(mark["fingerprint"], fingerprint, self.location)
        else:
            self._init_markers(fingerprint)

    @property
    def _format(self) -> int:
        return 2 if self.ngff == "0.4" else 3

    @property
    def spatial_dims(self) -> int:
        return len(self.shape) - self.lead

    def _attributes(self, levels: int, status: str) -> dict[str, Any]:
        ome = ome_image_attrs(self.spatial_dims, self.calibration, levels=levels, downsampling=self.downsampling,
                              channel_names=self.channel_names, label_values=self.label_values, version=self.ngff,
                              time=self.time)
        mark: dict[str, Any] = {"seamfree": {"status": status, "fingerprint": self.fingerprint}}
        if self.summary is not None:
            mark["seamfree"]["run"] = self.summary
        return {**ome, **mark} if self.ngff == "0.4" else {"ome": ome, **mark}

    @property
    def location(self) -> Path:
        return self.path

    def is_done(self, block: Sequence[int]) -> bool:
        return self.finished or super().is_done(block)

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

    def finalize(self, run: Runner | None = None, summary: dict[str, Any] | None = None) -> Any:
        """Write the pyramid and the labels (both resumable), then the metadata of every level and the complete
        status at once. ``run`` spreads their blocks over workers that see the same storage (the dask driver's);
        ``summary`` (a sharded run's shares, units, times) is kept in the attributes for ``seamfree status``."""
        if not self.finished:
            self.summary = summary
            levels = (write_pyramid(self.group, self.marker_root, self.downsampling, run=run, lead=self.lead)
                      if self.pyramid else 1)
            if self.labels_from is not None:
                self._write_labels(run)
            self.group.attrs.update(self._attributes(levels, "complete"))
            shutil.rmtree(self.marker_root, ignore_errors=True)
            self.finished = True
        return self.array

    def _write_labels(self, run: Runner | None) -> None:
        """``labels/mask``: the mask of level 0, block by block (one shard at a time), with its own pyramid."""
        assert self.labels_from is not None
        names = dimension_names(self.spatial_dims, self.time is not None) if self.ngff == "0.5" else None
        labels = self.group.require_group("labels")
        labels.attrs.update(labels_group_attrs([LABELS_NAME], self.ngff))
        image = labels.require_group(LABELS_NAME)
        base, lead = self.array, self.lead
        shape = (*self.shape[:lead - 1], 1, *self.shape[lead:])
        stored = getattr(base, "shards", None) or base.chunks
        core = (*stored[:lead - 1], 1, *stored[lead:])
        if "0" not in image:
            image.create_array("0", shape=shape, dtype=np.uint8, fill_value=0,
                               **_layout(core, (*base.chunks[:lead - 1], 1, *base.chunks[lead:]), self.ngff, names))
        done = self.marker_root / "labels"
        done.mkdir(parents=True, exist_ok=True)
        jobs = [(block, str(marker)) for block in blocks(shape, core, lead)
                if not (marker := done / "_".join(str(w.start) for w in block)).exists()]
        path = local_path(self.group)
        if run is None or path is None:
            _label_jobs(self.group, jobs, self.labels_from, lead)
        else:
            run(partial(label_task, path=path, labels_from=self.labels_from, lead=lead), [[job] for job in jobs])
        levels = write_pyramid(image, done, "stride", run=run, lead=lead) if self.pyramid else 1
        ome = ome_image_attrs(self.spatial_dims, self.calibration, name=LABELS_NAME, levels=levels,
                              downsampling="stride", label_values=2, version=self.ngff, time=self.time)
        image.attrs.update(ome if self.ngff == "0.4" else {"ome": ome})


def label_task(jobs: list[tuple[tuple[slice, ...], str]], *, path: str,
               labels_from: Callable[[np.ndarray], np.ndarray], lead: int = 1) -> int:
    """A task (here or on a dask worker): write the label blocks ``jobs`` (window, marker path) of the output at
    ``path`` from its level 0; return how many."""
    zarr = require("zarr", "zarr")
    return _label_jobs(zarr.open_group(path, mode="r+"), jobs, labels_from, lead)  # type: ignore[attr-defined]


def _label_jobs(group: Any, jobs: list[tuple[tuple[slice, ...], str]],
                labels_from: Callable[[np.ndarray], np.ndarray], lead: int = 1) -> int:
    base, target = group["0"], group[f"labels/{LABELS_NAME}/0"]
    for block, marker in jobs:
        values = np.asarray(base[block_key(block, lead)])
        target[block_key(block, lead)] = (labels_from(values) if lead == 1 else  # a time series: frame by frame
                                          np.stack([labels_from(frame) for frame in values]))
        Path(marker).touch()
    return len(jobs)


def _layout(shards: tuple[int, ...], chunks: tuple[int, ...], ngff: str,
            names: Sequence[str] | None) -> dict[str, Any]:
    """The keyword arguments of ``create_array`` for shards of ``shards`` holding chunks of ``chunks``."""
    if ngff == "0.4":  # zarr v2: no shards, no dimension names; NGFF 0.4 asks for "/" in chunk keys
        return {"chunks": shards, "chunk_key_encoding": {"name": "v2", "separator": "/"}}
    if tuple(chunks) == tuple(shards):
        return {"chunks": shards, "dimension_names": names}
    return {"chunks": chunks, "shards": shards, "dimension_names": names}


class ZarrBlockWriter(MarkedOutput):
    """Write access to an existing seamfree OME-Zarr output from another process (a dask worker).

    The driver creates the output and its fingerprint (:class:`ZarrOutput`); workers only write the chunks of
    their blocks and the blocks' done markers, and never change the metadata.
    """

    def __init__(self, path: str | os.PathLike[str], markers: Path | None = None) -> None:
        zarr = require("zarr", "zarr")
        self.path = Path(path)
        self.marker_root = markers or zarr_markers(self.path)
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
