"""The Fix widget of the napari plugin: make a model seamless (convert its BatchNorm to BatchRenorm, recalibrate it
on the image, or fix it without labels with the library's :func:`~seamfree.fix.fix_model`), write it, and diagnose
it before and after. Qt and napari are imported here; napari loads this module when the widget is opened."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import CheckBox, ComboBox, FileEdit, SpinBox, TextEdit
from napari.layers import Image

from seamfree.errors import SeamfreeError
from seamfree.napari.panel import Panel, edit_path, level0

if TYPE_CHECKING:
    import napari
    from torch import nn

__all__ = ["FixWidget"]


class FixWidget(Panel):
    """Make a model seamless: convert its BatchNorm to BatchRenorm and/or recalibrate its running statistics on
    the current image; write the new model and diagnose it before and after."""

    ACTIONS = ("convert to BatchRenorm", "recalibrate on the image", "convert, then recalibrate",
               "fix without labels (seamfree fix)")

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__(napari_viewer, "fix")
        self.action = ComboBox(choices=list(self.ACTIONS), value=self.ACTIONS[0], label="fix")
        self.image = ComboBox(choices=self._layers(Image), nullable=True, label="image")
        self.out = FileEdit(mode=FileDialogMode.OPTIONAL_FILE, filter="*.pt", label="new model (.pt)")
        self.compare = CheckBox(value=True, text="diagnose before and after")
        self.batches = SpinBox(value=32, min=1, max=4096, label="recalibration batches")
        self.patch = SpinBox(value=0, min=0, max=4096, label="patch (0: the training patch)")
        self.steps = SpinBox(value=600, min=1, max=100_000, label="fix: distillation steps")
        self.result = TextEdit(value="", label="before / after")
        self.result.read_only = True
        self.extend([self.model, self.action, self.image, self.out, self.compare, self.batches, self.patch,
                     self.steps, self.device, self.run_button, self.cancel_button, self.progress, self.status,
                     self.result])
        self.written: Path | None = None
        self.diagnoses: tuple[Any, Any] | None = None

    def run(self) -> None:
        from seamfree.diagnostics import DiagnoseConfig, diagnose
        from seamfree.layers import convert_norm
        from seamfree.models import model_metadata, save_model
        from seamfree.training.recalibrate import recalibrate_on_images

        action, layer, out, source = self.action.value, self.image.value, edit_path(self.out), edit_path(self.model)
        device, batches, patch = self.device.value, self.batches.value, self.patch.value
        recalibrate = action != self.ACTIONS[0]
        try:
            if out is None:
                raise SeamfreeError("choose the path of the new model file")
            if source is not None and out.exists() and out.resolve() == source.resolve():
                raise SeamfreeError(f"the new model {str(out)!r} is the input model itself; choose another path "
                                    "(the input stays as it was)")
            if out.exists():
                raise SeamfreeError(f"{str(out)!r} already exists; choose another path (nothing is overwritten)")
            if (recalibrate or self.compare.value) and layer is None:
                raise SeamfreeError(f"{action!r}{' and the comparison' if self.compare.value else ''} need an "
                                    "image layer")
            model = self.load(device)
        except Exception as exc:
            self._failed(exc)
            return
        data = None if layer is None else level0(layer)
        compare = self.compare.value

        def work(report: Callable[[str, float], None]) -> Any:
            def check(label: str, net: nn.Module, start: float) -> Any:
                return diagnose(net, data, config=DiagnoseConfig(device=device), name=label,
                                progress=lambda stage, f: report(f"{label}: {stage}", start + 0.4 * f))

            before = check("before", model, 0.0) if compare else None
            metadata = model_metadata(model)
            fixed = model
            if action == self.ACTIONS[3]:  # the library's fix_model, as `seamfree fix` runs it
                from seamfree.fix import FixConfig, fix_model

                report("fixing (self-distillation)", 0.4)
                result = fix_model(model, [data], config=FixConfig(iterations=self.steps.value, device=device,
                                                                   patch_size=patch or None))
                fixed, recalibrate_here = result.model, False
                metadata = {**metadata, "fixed_from": str(source), "fix": {k: v for k, v in result.to_dict().items()
                                                                           if k != "history"}}
            else:
                recalibrate_here = recalibrate
            if action not in (self.ACTIONS[1], self.ACTIONS[3]):
                report("converting", 0.4)
                fixed = convert_norm(model, "batchrenorm")
                metadata = {**metadata, "converted_from": str(source), "converted_norm": "batch"}
            if recalibrate_here:
                report("recalibrating", 0.45)
                if fixed is model:
                    import copy

                    fixed = copy.deepcopy(model)  # the loaded model stays as the file has it
                size = patch or metadata.get("patch_size") or 128
                recalibrate_on_images(fixed, [data], patch_size=size, batches=batches, device=device)
                metadata = {**metadata, "recalibrated_on": "the napari layer"}
            report("writing", 0.55)
            path = save_model(fixed, out, metadata=metadata)
            after = check("after", fixed, 0.6) if compare else None
            return path, before, after

        self.start(work, self.finished)

    def finished(self, result: tuple[Path, Any, Any]) -> None:
        path, before, after = result
        self.written = Path(path)
        self.diagnoses = (before, after) if before is not None else None
        lines = [f"wrote {path}"]
        for label, diagnosis in (("before", before), ("after", after)):
            if diagnosis is not None:
                tm = diagnosis.tile_mismatch
                lines.append(f"{label}: {diagnosis.recommendation.verdict}; TM_dice {tm.tm_dice:.3g}, TM_abs "
                             f"{tm.tm_abs:.2g}, seams {diagnosis.seams.summary}")
        self.result.value = "\n".join(lines)
        self.progress.value = 100
        self.status.value = f"wrote {path}"
