"""Training: patch sampling from large images, augmentation, losses, the loop and its configuration."""

from seamfree.training.config import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
    TrainConfig,
    TrainingConfig,
    config_to_dict,
    load_config,
)
from seamfree.training.loop import TrainResult, build_training_model, train, validate

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingConfig",
    "build_training_model",
    "config_to_dict",
    "load_config",
    "train",
    "validate",
]
