"""The plugin's three dock widgets: Diagnose, Predict, Fix (magicgui containers over the public functions).

Each runs its work in a worker thread (``napari.qt.threading.create_worker``) with a progress bar and a cancel
button; cancel takes effect at the next progress report (a batch of tiles, a diagnosis stage), and a cancelled
prediction resumes when it is run again into the same output. Image layers are never loaded whole: the
functions read a layer's level 0 window by window, whatever backs it (numpy, dask, zarr).

This module imports Qt and napari; napari loads it only when a widget is opened.
"""

from __future__ import annotations

import logging
import tempfile
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    LineEdit,
    PushButton,
    SpinBox,
    Table,
    TextEdit,
)
from napari.layers import Image, Labels, Layer, Shapes

from seamfree.errors import SeamfreeError
from seamfree.napari.layers import audit_rows, diagnosis_layers, output_layers, verdict_text
from seamfree.napari.panel import Panel, edit_path, level0
from seamfree.segment.methods import METHODS
from seamfree.tiling.stitching import CROP, STITCHINGS

if TYPE_CHECKING:
    import napari

__all__ = ["DiagnoseWidget", "PredictWidget"]

logger = logging.getLogger(__name__)

# "current view" and "shapes layer" regions of a volume: the axes not on screen span at most this many voxels
# around the current slice (the whole axis when shorter)
OFF_SCREEN_EXTENT = 128
REFRESH_SECONDS = 0.5  # how often, at most, a filling output layer is redrawn
REFRESH_SHARE = 0.1  # redrawing may take at most this share of the time (it reads the file in the GUI thread)


def _image_axes(layer: Image) -> str | None:
    return "YXC" if getattr(layer, "rgb", False) else None


class DiagnoseWidget(Panel):
    """Diagnose a model on an image layer: the tiled prediction, its seam map, the tile-mismatch map of two
    grids and the core grid as layers; the verdict, the norm audit and TM/TED/seam score here."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, "diagnose")
        self.image = ComboBox(choices=self._layers(Image), label="image")
        self.ground_truth = ComboBox(choices=self._layers(Labels), nullable=True, label="ground truth (optional)")
        self.region = ComboBox(choices=["central region", "current view", "shapes layer"], value="central region",
                               label="region")
        self.shapes = ComboBox(choices=self._layers(Shapes), nullable=True, label="region shapes")
        self.core = SpinBox(value=0, min=0, max=1 << 16, label="core (0: from the memory budget)")
        self.ted_batches = SpinBox(value=0, min=0, max=256, label="TED batches (0: 32 patches, ≥ 8)")
        self.verdict = TextEdit(value="", label="verdict")
        self.verdict.read_only = True
        self.audit = Table(value=[[""] * 5], columns=["layer", "type", "statistics", "tile-dependent", "note"],
                           label="norm audit")
        self.report_button = PushButton(text="open full report", enabled=False)
        self.report_button.changed.connect(lambda: self.open_report())
        self.extend([self.model, self.image, self.ground_truth, self.region, self.shapes, self.core,
                     self.ted_batches, self.device, self.run_button, self.cancel_button, self.progress, self.status,
                     self.verdict, self.audit, self.report_button])
        self.diagnosis: Any = None
        self.added: list[Layer] = []

    def window(self, layer: Image, dims: int) -> tuple[tuple[int, int], ...] | None:
        """The diagnosed region in the layer's data coordinates (None: the central region)."""
        shape = tuple(int(n) for n in level0(layer).shape)[:dims] if not getattr(layer, "rgb", False) \
            else tuple(int(n) for n in level0(layer).shape[:-1])
        if self.region.value == "central region":
            return None
        if self.region.value == "current view":
            corners = np.asarray(layer.corner_pixels)
            low, high = corners[0].astype(int), corners[1].astype(int) + 1
        else:
            shapes = self.shapes.value
            if shapes is None or not len(shapes.data):
                raise SeamfreeError("region 'shapes layer' needs a shapes layer with at least one shape (draw a "
                                    "rectangle around the region to diagnose), or choose another region")
            selected = sorted(shapes.selected_data) or range(len(shapes.data))
            vertices = np.concatenate([np.asarray(shapes.data[i], float) for i in selected])
            world = vertices * np.asarray(shapes.scale) + np.asarray(shapes.translate)
            n = world.shape[1]
            scale, translate = np.asarray(layer.scale)[-n:], np.asarray(layer.translate)[-n:]
            data = (world - translate) / scale
            low = np.zeros(len(shape), int)
            high = np.array(shape, int)
            low[-n:], high[-n:] = np.floor(data.min(0)).astype(int), np.ceil(data.max(0)).astype(int)
            if n < len(shape):  # a 2D shape on a volume: the current slice, as for the view
                point = np.asarray(self.viewer.dims.point)[-len(shape):]
                current = ((point - np.asarray(layer.translate)) / np.asarray(layer.scale)).astype(int)
                low[:-n], high[:-n] = current[:-n], current[:-n] + 1
        window = []
        displayed = set(self.viewer.dims.displayed)
        offset = self.viewer.dims.ndim - len(shape)
        for axis, n in enumerate(shape):
            start, stop = int(max(0, low[axis])), int(min(n, high[axis]))
            if axis + offset not in displayed and stop - start <= 1:  # off screen: around the current slice
                half = min(n, OFF_SCREEN_EXTENT) // 2
                centre = min(max(start, half), n - (min(n, OFF_SCREEN_EXTENT) - half))
                start, stop = centre - half, centre - half + min(n, OFF_SCREEN_EXTENT)
            if stop <= start:
                raise SeamfreeError(f"the region is empty along axis {axis} ({start}..{stop}); zoom onto the "
                                    "image or draw the shape over it")
            window.append((start, stop))
        return tuple(window)

    def run(self) -> None:
        from seamfree.diagnostics import DiagnoseConfig, diagnose
        from seamfree.models import describe_model

        layer = self.image.value
        if layer is None:
            self.status.value = "error: add an image layer first (File → Open, or a sample image)"
            return
        truth = self.ground_truth.value
        device, core, batches = self.device.value, self.core.value or None, self.ted_batches.value or None
        data, gt = level0(layer), None if truth is None else level0(truth)
        axes, name = _image_axes(layer), Path(str(edit_path(self.model) or "model")).stem
        try:
            model = self.load(device)
            dims = describe_model(model).spatial_dims
            window = self.window(layer, dims)
        except Exception as exc:
            self._failed(exc)
            return

        def work(report: Callable[[str, float], None]) -> Any:
            config = DiagnoseConfig(core=core, ted_batches=batches, device=device, region=window)
            return diagnose(model, data, ground_truth=gt, config=config, axes=axes, name=name, progress=report)

        self.start(work, lambda diagnosis: self.display(diagnosis, layer))

    def display(self, diagnosis: Any, layer: Image) -> None:
        """Put ``diagnosis`` on screen: its layers over ``layer``, the verdict and the audit."""
        self.diagnosis = diagnosis
        scale, translate = layer.scale, layer.translate
        if getattr(layer, "rgb", False):
            scale, translate = scale[:2], translate[:2]
        self.added = self.replace_layers(diagnosis_layers(diagnosis, scale=scale, translate=translate))
        self.verdict.value = verdict_text(diagnosis)
        rows = audit_rows(diagnosis)
        columns = ["layer", "type", "statistics", "tile-dependent", "note"]
        self.audit.value = {column: [row[column] for row in rows] or [""] for column in columns}
        self.report_button.enabled = True
        self.progress.value = 100
        self.status.value = f"{diagnosis.recommendation.verdict} ({sum(diagnosis.seconds.values()):.1f} s)"

    def open_report(self, folder: str | Path | None = None, *, browser: bool = True) -> Path:
        """Write the HTML report of the last diagnosis (to a temporary folder by default) and open it."""
        from seamfree.diagnostics.report import write_report

        if self.diagnosis is None:
            raise SeamfreeError("run a diagnosis first")
        folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="seamfree-report-"))
        page = Path(write_report(self.diagnosis, folder))
        if browser:
            webbrowser.open(page.resolve().as_uri())
        self.status.value = f"report: {page}"
        return page


class PredictWidget(Panel):
    """Predict an image layer of any size into a resumable OME-Zarr file, shown as a lazy layer while it fills
    in; masks and instance labels arrive as Labels layers."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, "predict")
        self.image = ComboBox(choices=self._layers(Image), label="image")
        self.output = FileEdit(mode=FileDialogMode.OPTIONAL_FILE, filter="*.zarr", label="output (.zarr)")
        self.stitching = ComboBox(choices=list(STITCHINGS), value=CROP.name, label="stitching",
                                  tooltip="crop: exact (equal to the whole-image prediction); blend: weighted")
        self.halo = ComboBox(choices=["exact", "near-exact"], value="exact", label="halo",
                             tooltip="exact: the receptive field's halo; near-exact: the effective receptive field, "
                                     "its error against the exact halo measured first and kept under 1e-3")
        self.tta = CheckBox(value=False, text="test-time augmentation (flips)")
        self.kind = ComboBox(choices=["probabilities", "mask"], value="probabilities", label="output")
        self.mask_labels = CheckBox(value=True, text="masks as Labels (labels/mask)")
        self.segment = ComboBox(choices=["none", *METHODS], value="none",
                                label="instances")
        self.core = SpinBox(value=0, min=0, max=1 << 16, label="core (0: from the memory budget)")
        self.budget = SpinBox(value=0, min=0, max=1 << 20, label="memory budget MB (0: default)")
        self.scheduler = LineEdit(value="", label="dask scheduler (optional)",
                                  tooltip="address of a dask.distributed scheduler, e.g. tcp://10.0.0.5:8786; the "
                                          "layer must come from a file the workers can read")
        self.extend([self.model, self.image, self.output, self.stitching, self.halo, self.tta, self.kind,
                     self.mask_labels, self.segment, self.core, self.budget, self.device, self.scheduler,
                     self.run_button, self.cancel_button, self.progress, self.status])
        self.report: Any = None
        self.live: list[Layer] = []
        self._target: Path | None = None
        self._drawn = 0.0
        self._redraw_cost = 0.0

    def config(self) -> Any:
        from seamfree.tiling import PredictConfig

        mask = self.kind.value == "mask"
        return PredictConfig(core=self.core.value or None, stitching=self.stitching.value, tta=self.tta.value,
                             halo="effective" if self.halo.value == "near-exact" else "auto",
                             device=self.device.value, output_kind="mask" if mask else "float32",
                             labels=self.mask_labels.value and not mask,
                             memory_budget=int(self.budget.value * 1e6) or None)  # MB, as the CLI

    def run(self) -> None:
        layer, out = self.image.value, edit_path(self.output)
        if layer is None or out is None:
            self.status.value = "error: choose an image layer and an output .zarr path"
            return
        if out.suffix.lower() != ".zarr":
            self.status.value = f"error: the output {str(out)!r} must be a .zarr folder (OME-Zarr)"
            return
        try:
            config = self.config()
            model = self.load(self.device.value)
        except Exception as exc:
            self._failed(exc)
            return
        data, axes = level0(layer), _image_axes(layer)
        scale = tuple(float(s) for s in layer.scale)
        if any(s != 1.0 for s in scale) and not getattr(layer, "rgb", False):
            from dataclasses import replace

            config = replace(config, voxel_size=scale[-min(3, len(scale)):])
        method, address, source = self.segment.value, self.scheduler.value.strip(), layer.source.path
        model_path = edit_path(self.model)
        self._target, self.live = out, []

        def work(report: Callable[[str, float], None]) -> Any:
            from seamfree.tiling import predict

            def tiles(done: int, total: int) -> None:
                report(f"predicted {done} of {total} tiles", done / max(total, 1))

            if address:
                from seamfree.distributed import ClusterConfig, predict_distributed

                if source is None:
                    raise SeamfreeError("a dask cluster reads the image from its file, and this layer has none; "
                                        "open the image from a file (File → Open) or clear the scheduler field")
                summary = predict_distributed(str(model_path), source, out, config=config,
                                              cluster=ClusterConfig(scheduler=address), progress=tiles)
                result = summary
            else:
                found: list[Any] = []
                predict(model, data, out, config=config, axes=axes, progress=tiles, report=found)
                result = found[0]
            if method != "none":
                from seamfree.segment import segment

                report(f"instance labels ({method})", 1.0)
                segment(str(out), method=method)
            return result

        self.start(work, self.finished)

    def _progressed(self, stage: str, fraction: float) -> None:
        super()._progressed(stage, fraction)
        target = self._target
        if target is None or not (target / "0").exists():
            return
        now = time.monotonic()
        if not self.live:  # the output exists: show it while it fills in
            self.live = self.replace_layers([layer for layer in output_layers(target) if layer[2] == "image"])
            self._drawn = now
        elif now - self._drawn >= max(REFRESH_SECONDS, self._redraw_cost / REFRESH_SHARE):
            for layer in self.live:
                layer.refresh()
            self._drawn = time.monotonic()
            self._redraw_cost = self._drawn - now

    def finished(self, report: Any) -> None:
        """The output is complete: replace the filling layer by the multiscale result and its Labels."""
        self.report = report
        for layer in self.live:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            if layer in self.own:
                self.own.remove(layer)
        assert self._target is not None
        self.live = self.replace_layers(output_layers(self._target))
        computed = getattr(report, "tiles_computed", None)
        total = getattr(report, "tiles_total", None)
        self.progress.value = 100
        self.status.value = f"wrote {self._target}: {computed} of {total} tiles computed"
        check = getattr(report, "halo_check", None)
        if check is not None:
            self.status.value += f"; {check.summary()}"

    def cancel_note(self) -> str:
        return f"The output {self._target} is incomplete: press predict again to resume it."
