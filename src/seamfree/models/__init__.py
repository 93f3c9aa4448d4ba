"""Segmentation models (U-Net, small ViT) and checkpoints that carry their configuration."""

from seamfree.models.checkpoint import ARCHITECTURES, build_model, load_model, model_metadata, save_model
from seamfree.models.unet import UNet, check_divisible
from seamfree.models.vit import ViTSegmenter

__all__ = [
    "ARCHITECTURES",
    "UNet",
    "ViTSegmenter",
    "build_model",
    "check_divisible",
    "load_model",
    "model_metadata",
    "save_model",
]
