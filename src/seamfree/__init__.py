"""seamfree: deep-learning segmentation of very large biological images, free of tiling artifacts.

The public verbs live here; everything the command line does is one of these functions.
"""

from seamfree.errors import SeamfreeError
from seamfree.layers import audit_norms, convert_norm, create_norm_layer, get_norm_layer, recalibrate_norm
from seamfree.models import UNet, ViTSegmenter, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "SeamfreeError",
    "UNet",
    "ViTSegmenter",
    "__version__",
    "audit_norms",
    "convert_norm",
    "create_norm_layer",
    "get_norm_layer",
    "load_model",
    "recalibrate_norm",
    "save_model",
]
