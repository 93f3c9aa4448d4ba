"""Where a segmentation's labels go, and how blocks reach them: a standalone OME-Zarr label image, the label
image ``labels/NAME`` of an OME-Zarr prediction (listed in its ``labels`` group when complete), or an array in
memory; the driver's writer and the workers' (``BlockWriter``); the output's lock, markers and scratch folder,
and the fingerprint check that refuses another segmentation's output."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.errors import ConfigError, OutputExistsError, require
from seamfree.io.markers import ArrayOutput, atomic_write_text, block_digest, check_fingerprint
from seamfree.io.ome import labels_group_attrs
from seamfree.io.pyramid import Runner
from seamfree.io.safety import check_not_input, remove_own_output
from seamfree.io.zarr_output import (
    ZarrBlockWriter,
    ZarrOutput,
    is_seamfree_zarr,
    refuse_foreign_entries,
    seamfree_attrs,
    zarr_markers,
)

__all__ = ["BlockWriter", "LabelTarget", "LabelWriter", "put_block"]

logger = logging.getLogger(__name__)


class BlockWriter:
    """A worker's access to the label image: write a block's window, then its done marker (with its digest and
    how many of its voxels are unverified)."""

    def __init__(self, output: str | None, markers: str | None) -> None:
        if output is None:
            raise ConfigError("an in-memory segmentation runs in this process only")
        self.target = ZarrBlockWriter(output, Path(markers) if markers else None)

    def put(self, index: tuple[int, ...], window: tuple[slice, ...], labels: np.ndarray, unverified: int) -> None:
        put_block(self.target, index, window, labels, unverified)


def put_block(target: Any, index: tuple[int, ...], window: tuple[slice, ...], labels: np.ndarray,
         unverified: int) -> None:
    data = labels.astype(target.dtype)[np.newaxis]
    target.write(window, data)
    target.mark_done(index, {"window": [[w.start, w.stop] for w in window], "sha256": block_digest(data),
                             "unverified": int(unverified)})


class LabelWriter:
    """The driver's side of the label image (a :class:`ZarrOutput`, or an array in memory)."""

    def __init__(self, target: Any, group_update: Any = None) -> None:
        self.target = target
        self.group_update = group_update
        self.local = self if isinstance(target, ArrayOutput) else None
        self._records: dict[tuple[int, ...], dict[str, Any]] = {}

    def put(self, index: tuple[int, ...], window: tuple[slice, ...], labels: np.ndarray, unverified: int) -> None:
        put_block(self, index, window, labels, unverified)

    @property
    def dtype(self) -> np.dtype:
        return self.target.dtype

    def write(self, window: tuple[slice, ...], data: np.ndarray) -> None:
        self.target.write(window, data)

    def mark_done(self, index: tuple[int, ...], record: dict[str, Any]) -> None:
        self._records[tuple(index)] = record
        self.target.mark_done(index, record)

    def is_done(self, index: tuple[int, ...]) -> bool:
        return self.target.is_done(index)

    def record(self, index: tuple[int, ...]) -> dict[str, Any] | None:
        if tuple(index) in self._records:
            return self._records[tuple(index)]
        reader = getattr(self.target, "_record", None)
        return reader(index) if reader is not None else None

    def finalize(self, summary: dict[str, Any], run: Runner | None) -> Any:
        if isinstance(self.target, ArrayOutput):
            return self.target.array[0]
        self.target.group.attrs.update({"seamfree_segment": summary})
        self.target.finalize(run=run)
        if self.group_update is not None:
            self.group_update()
        return self.target.array


@dataclass
class LabelTarget:
    """Where the labels go: a standalone OME-Zarr, the label image of a prediction, or memory."""

    path: Path | None
    prediction_root: Path | None = None
    name: str | None = None
    overwrite: bool = False
    pyramid: bool = True

    @staticmethod
    def choose(prediction: Any, output: str | Path | None, config: Any) -> LabelTarget:
        name = config.name or config.method
        if output is not None:
            path = Path(output)
            if path.suffix.lower() not in ("", ".zarr"):
                raise ConfigError(f"segment writes an OME-Zarr label image; got the output {str(path)!r} "
                                  f"({path.suffix}): pass a .zarr path")
            if isinstance(prediction, str | Path):  # never the prediction, inside it or around it
                check_not_input(path, str(prediction))
            return LabelTarget(path, overwrite=config.overwrite, pyramid=config.pyramid)
        if isinstance(prediction, str | Path) and Path(prediction).is_dir():
            root = Path(prediction)
            if not is_seamfree_zarr(root):
                raise ConfigError(f"{str(root)!r} was not written by seamfree predict, so its labels cannot be "
                                  "added to it; pass an output path (seamfree segment PRED OUT.zarr)")
            return LabelTarget(root / "labels" / name, root, name, config.overwrite, config.pyramid)
        if isinstance(prediction, str | Path):
            raise ConfigError(f"the labels of {str(prediction)!r} need an output path (OUT.zarr): only an OME-Zarr "
                              "prediction holds its labels next to it")
        return LabelTarget(None)

    @property
    def lock(self) -> Path | None:
        if self.path is None:
            return None
        if self.prediction_root is not None:  # the prediction's own lock: predict --overwrite and segment of one
            return self.prediction_root    # prediction never interleave
        return self.path

    @property
    def markers_path(self) -> str | None:
        if self.path is None:
            return None
        if self.prediction_root is not None:
            return str(self.prediction_root.with_name(f"{self.prediction_root.name}.seamfree-labels-{self.name}"))
        return str(zarr_markers(self.path))

    @property
    def worker_path(self) -> str | None:
        return None if self.path is None else str(self.path)

    def finished(self, fingerprint: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        """The labels and summary of a complete earlier run with the same fingerprint (None: work to do); an
        output with another fingerprint, or not seamfree's, is refused (or replaced with ``overwrite``)."""
        if self.path is None:
            return None
        if self.overwrite:
            self._remove()
            return None
        if not self.path.exists():
            return None
        mark = seamfree_attrs(self.path)
        if mark is None:
            raise OutputExistsError(f"output {str(self.path)!r} exists and was not written by seamfree; choose "
                                    "another path (seamfree never overwrites data it did not write)")
        stored = mark.get("fingerprint")
        if isinstance(stored, dict):
            check_fingerprint(stored, fingerprint, self.path, "segmentation")
        if mark.get("status") != "complete" or (self.markers_path and Path(self.markers_path).exists()):
            return None
        zarr = require("zarr", "zarr")
        if self.prediction_root is not None:
            self._list_label()  # a run killed between completing the labels and naming them
        group = zarr.open_group(str(self.path), mode="r")  # type: ignore[attr-defined]
        return group["0"], dict(group.attrs.get("seamfree_segment", {}))

    def _remove(self) -> None:
        assert self.path is not None
        if self.path.exists() or self.path.is_symlink():
            if is_seamfree_zarr(self.path):
                refuse_foreign_entries(self.path)
            remove_own_output(self.path, written_by_seamfree=is_seamfree_zarr(self.path))
        markers = Path(self.markers_path) if self.markers_path else None
        if markers is not None and markers.is_dir():
            shutil.rmtree(markers)

    def scratch(self, fingerprint: dict[str, Any]) -> Path:
        """The folder of the passes' tables and scratch labels (checked against the fingerprint on resume)."""
        if self.path is None:
            return Path(tempfile.mkdtemp(prefix="seamfree-segment-"))
        if self.prediction_root is None and not self.path.parent.is_dir():
            raise ConfigError(f"the folder of output {str(self.path)!r} does not exist; create it first")
        assert self.markers_path is not None
        root = Path(self.markers_path) / "segment"
        stored = root / "fingerprint.json"
        if stored.is_file():
            check_fingerprint(json.loads(stored.read_text()), fingerprint, self.path, "segmentation")
            logger.info("resuming the segmentation %s", self.path)
        else:
            root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(stored, json.dumps(fingerprint, sort_keys=True, indent=1))
        return root

    def open(self, spatial: tuple[int, ...], block: tuple[int, ...], dtype: Any, fingerprint: dict[str, Any],
             calibration: Any) -> LabelWriter:
        if self.path is None:
            return LabelWriter(ArrayOutput(np.zeros((1, *spatial), dtype)))
        if self.prediction_root is not None:
            zarr = require("zarr", "zarr")
            zarr.open_group(str(self.prediction_root), mode="r+").require_group("labels")  # type: ignore[attr-defined]
        output = ZarrOutput(self.path, shape=(1, *spatial), dtype=np.dtype(dtype), chunks=block,
                            fingerprint=fingerprint, calibration=calibration, pyramid=self.pyramid,
                            downsampling="stride", label_values=0, markers=Path(self.markers_path or ""))
        return LabelWriter(output, self._list_label if self.prediction_root is not None else None)

    def _list_label(self) -> None:
        """Name the new label image in the prediction's ``labels`` group (beside ``mask`` of ``--labels``)."""
        zarr = require("zarr", "zarr")
        assert self.prediction_root is not None and self.name is not None
        root = zarr.open_group(str(self.prediction_root), mode="r+")  # type: ignore[attr-defined]
        group = root.require_group("labels")
        attrs = dict(group.attrs)
        listed = list((attrs.get("ome", attrs)).get("labels", []))
        version = "0.4" if "ome" not in attrs and group.metadata.zarr_format == 2 else "0.5"
        group.attrs.update(labels_group_attrs([*[n for n in listed if n != self.name], self.name], version))
