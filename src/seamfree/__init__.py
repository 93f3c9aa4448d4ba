"""seamfree: deep-learning segmentation of very large biological images, free of tiling artifacts.

The public verbs live here; everything the command line does is one of these functions.
"""

from seamfree.data import SyntheticSpec, synthetic_image
from seamfree.diagnostics import DiagnoseConfig, Diagnosis, diagnose
from seamfree.diagnostics.report import write_report
from seamfree.errors import SeamfreeError
from seamfree.io import open_image
from seamfree.layers import audit_norms, convert_norm, create_norm_layer, get_norm_layer, recalibrate_norm
from seamfree.models import UNet, ViTSegmenter, load_model, save_model
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

__version__ = "0.1.0"

__all__ = [
    "DiagnoseConfig",
    "Diagnosis",
    "IntensityNormalization",
    "PredictConfig",
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
    "diagnose",
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
