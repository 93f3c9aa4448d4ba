"""Segmentation models (U-Net, small ViT), checkpoints that carry their configuration, and the model contract
(:func:`describe_model`): geometry, output, activation, audit and receptive field of any model, cached."""

from seamfree.models.checkpoint import ARCHITECTURES, build_model, load_model, model_metadata, save_model
from seamfree.models.describe import ModelInfo, TileProbe, clear_model_cache, describe_model, select_output
from seamfree.models.receptive import ReceptiveField, measure_receptive_field
from seamfree.models.unet import UNet, check_divisible
from seamfree.models.vit import ViTSegmenter

__all__ = [
    "ARCHITECTURES",
    "ModelInfo",
    "ReceptiveField",
    "TileProbe",
    "UNet",
    "ViTSegmenter",
    "build_model",
    "check_divisible",
    "clear_model_cache",
    "describe_model",
    "load_model",
    "measure_receptive_field",
    "model_metadata",
    "save_model",
    "select_output",
]
