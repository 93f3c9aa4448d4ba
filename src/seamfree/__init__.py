"""seamfree: deep-learning segmentation of very large biological images, free of tiling artifacts.

The public verbs live here; everything the command line does is one of these functions. They are loaded on
first use (PEP 562), so that ``import seamfree`` and the CLI's ``--help``/``--version`` import no torch, and the
CLI can tune the allocator before torch starts any thread.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from seamfree._version import __version__

if TYPE_CHECKING:
    from seamfree.data import SyntheticSpec, synthetic_image
    from seamfree.diagnostics import DiagnoseConfig, Diagnosis, diagnose
    from seamfree.diagnostics.report import write_report
    from seamfree.diagnostics.seam_grid import SeamGrid, find_seams
    from seamfree.errors import SeamfreeError
    from seamfree.fix import FixConfig, FixResult, fix_model
    from seamfree.io import open_image
    from seamfree.layers import audit_norms, convert_norm, create_norm_layer, get_norm_layer, recalibrate_norm
    from seamfree.models import ModelInfo, UNet, ViTSegmenter, describe_model, load_model, save_model
    from seamfree.tiling import (
        IntensityNormalization,
        PredictConfig,
        TileGrid,
        measure_receptive_field,
        predict,
        predict_whole,
        suggest_tiling,
    )
    from seamfree.training import TrainConfig, load_config, train
    from seamfree.training.recalibrate import recalibrate_on_images

# public name -> module that defines it
_EXPORTS = {
    "DiagnoseConfig": "seamfree.diagnostics",
    "Diagnosis": "seamfree.diagnostics",
    "FixConfig": "seamfree.fix",
    "FixResult": "seamfree.fix",
    "SeamGrid": "seamfree.diagnostics.seam_grid",
    "find_seams": "seamfree.diagnostics.seam_grid",
    "fix_model": "seamfree.fix",
    "IntensityNormalization": "seamfree.tiling",
    "ModelInfo": "seamfree.models",
    "PredictConfig": "seamfree.tiling",
    "SeamfreeError": "seamfree.errors",
    "SyntheticSpec": "seamfree.data",
    "TileGrid": "seamfree.tiling",
    "TrainConfig": "seamfree.training",
    "UNet": "seamfree.models",
    "ViTSegmenter": "seamfree.models",
    "audit_norms": "seamfree.layers",
    "convert_norm": "seamfree.layers",
    "create_norm_layer": "seamfree.layers",
    "describe_model": "seamfree.models",
    "diagnose": "seamfree.diagnostics",
    "get_norm_layer": "seamfree.layers",
    "load_config": "seamfree.training",
    "load_model": "seamfree.models",
    "measure_receptive_field": "seamfree.tiling",
    "open_image": "seamfree.io",
    "predict": "seamfree.tiling",
    "predict_whole": "seamfree.tiling",
    "recalibrate_norm": "seamfree.layers",
    "recalibrate_on_images": "seamfree.training.recalibrate",
    "save_model": "seamfree.models",
    "suggest_tiling": "seamfree.tiling",
    "synthetic_image": "seamfree.data",
    "train": "seamfree.training",
    "write_report": "seamfree.diagnostics.report",
}

__all__ = [
    "DiagnoseConfig",
    "Diagnosis",
    "FixConfig",
    "FixResult",
    "IntensityNormalization",
    "ModelInfo",
    "PredictConfig",
    "SeamGrid",
    "SeamfreeError",
    "SyntheticSpec",
    "TileGrid",
    "TrainConfig",
    "UNet",
    "ViTSegmenter",
    "__version__",
    "audit_norms",
    "convert_norm",
    "create_norm_layer",
    "describe_model",
    "diagnose",
    "find_seams",
    "fix_model",
    "get_norm_layer",
    "load_config",
    "load_model",
    "measure_receptive_field",
    "open_image",
    "predict",
    "predict_whole",
    "recalibrate_norm",
    "recalibrate_on_images",
    "save_model",
    "suggest_tiling",
    "synthetic_image",
    "train",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'seamfree' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
