"""What every widget of the napari plugin shares: a panel with a model file, a device, run and cancel buttons, a
progress bar and a status line, whose work runs in a thread and can be cancelled. Qt and napari are imported
here; napari loads this module when a widget is opened."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
)
from napari.layers import Layer
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

from seamfree.errors import SeamfreeError
from seamfree.napari.layers import LayerData

if TYPE_CHECKING:
    import napari
    from torch import nn

__all__ = ["Cancelled", "Panel", "edit_path", "level0"]

logger = logging.getLogger(__name__)


class Cancelled(SeamfreeError):
    """The user pressed cancel; the work stopped at its next progress report."""


class _Relay(QObject):
    """Carries progress from the worker thread to the widget (a queued Qt signal)."""

    progressed = Signal(str, float)


class _Job:
    """``work(report)`` in a worker thread; ``report(stage, fraction)`` raises :class:`Cancelled` once cancelled."""

    def __init__(self, work: Callable[[Callable[[str, float], None]], Any], *,
                 progress: Callable[[str, float], None], done: Callable[[Any], None],
                 failed: Callable[[BaseException], None]) -> None:
        self._stop = threading.Event()
        self._relay = _Relay()
        self._relay.progressed.connect(progress)

        def report(stage: str, fraction: float) -> None:
            if self._stop.is_set():
                raise Cancelled(f"cancelled during {stage}")
            self._relay.progressed.emit(stage, float(fraction))

        self.worker = create_worker(work, report, _start_thread=False,
                                    _connect={"returned": done, "errored": failed})
        self.worker.start()

    def cancel(self) -> None:
        self._stop.set()


def _devices() -> list[str]:
    import torch

    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def edit_path(edit: FileEdit) -> Path | None:
    """The path in a file field, None when empty."""
    value = str(edit.value or "").strip()
    return None if value in ("", ".") else Path(value)


def level0(layer: Layer) -> Any:
    """The full-resolution data of a layer, as stored (a dask or zarr array stays lazy)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


class Panel(Container):
    """What the three widgets share: the viewer, a model field, run/cancel, progress and a status line."""

    def __init__(self, napari_viewer: napari.Viewer, run_text: str) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.model = FileEdit(mode=FileDialogMode.EXISTING_FILE, label="model",
                              filter="*.pt *.pth *.ts *.pt2 *.zip *.yaml",
                              tooltip="seamfree checkpoint, TorchScript file or bioimage.io package")
        self.device = ComboBox(choices=_devices(), value="cpu", label="device")
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="cancel", enabled=False)
        self.progress = ProgressBar(min=0, max=100, value=0, label="progress")
        self.status = Label(value="", label="")
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.job: _Job | None = None
        self.error: BaseException | None = None
        self.own: list[Layer] = []  # the layers this widget added
        self._models: dict[tuple[str, float, str], nn.Module] = {}

    @property
    def busy(self) -> bool:
        """Whether a job is running (tests wait on this)."""
        return self.job is not None

    def _layers(self, kind: type[Layer]) -> Callable[[Any], list[tuple[str, Any]]]:
        def choices(_: Any) -> list[tuple[str, Any]]:
            found: list[Layer] = [layer for layer in self.viewer.layers if isinstance(layer, kind)]
            return [(layer.name, layer) for layer in found]
        return choices

    def load(self, device: str) -> nn.Module:
        """The model in the model field (loaded once per file version and device)."""
        from seamfree.models import load_model

        path = edit_path(self.model)
        if path is None:
            raise SeamfreeError("choose a model file first (a seamfree checkpoint, TorchScript or bioimage.io "
                                "package)")
        key = (str(path.resolve()), path.stat().st_mtime if path.exists() else 0.0, device)
        if key not in self._models:
            self._models = {key: load_model(path, device=device)}
        return self._models[key]

    def start(self, work: Callable[[Callable[[str, float], None]], Any], done: Callable[[Any], None]) -> None:
        if self.job is not None:
            return
        self.error = None
        self.progress.value = 0
        self.status.value = "starting"
        self.run_button.enabled, self.cancel_button.enabled = False, True

        def finished(result: Any) -> None:
            self._idle()
            try:
                done(result)
            except Exception as exc:  # showing the result failed: say so rather than crash the viewer
                self._failed(exc)

        self.job = _Job(work, progress=self._progressed, done=finished, failed=self._failed)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.value = "cancelling at the next progress step"

    def _idle(self) -> None:
        self.job = None
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def _progressed(self, stage: str, fraction: float) -> None:
        self.progress.value = round(100 * min(max(fraction, 0.0), 1.0))
        self.status.value = stage

    def _failed(self, error: BaseException) -> None:
        self._idle()
        self.error = error
        if isinstance(error, Cancelled):
            self.status.value = f"{error}. {self.cancel_note()}"
        else:
            logger.error("seamfree: %s", error, exc_info=not isinstance(error, SeamfreeError))
            self.status.value = f"error: {error}"

    def cancel_note(self) -> str:
        return "Nothing was written."

    def replace_layers(self, layers: list[LayerData]) -> list[Layer]:
        """Add ``layers``, replacing the layers of the same names that this widget added before (a rerun updates
        them); a user's layer of the same name stays (napari numbers the new one)."""
        added = []
        for data, meta, kind in layers:
            for old in [layer for layer in self.own if layer.name == meta["name"]]:
                self.own.remove(old)
                if old in self.viewer.layers:
                    self.viewer.layers.remove(old)
            added.append(self.viewer.add_layer(Layer.create(data, meta, kind)))
        self.own += added
        return added
