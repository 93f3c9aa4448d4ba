"""Training data from a data configuration: synthetic images, files, or a named public dataset.

Every source gives ``(image, mask)`` pairs with images ``(C, *spatial)`` as stored (raw intensities) and masks
``(C_out, *spatial)`` uint8. Training normalizes each image with its own global statistics, exactly as
``seamfree.predict`` does by default, so that what the network sees in training is what it sees in use.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from seamfree.data.config import DataConfig
from seamfree.errors import ConfigError, DataError
from seamfree.io.readers import open_image

__all__ = ["Pair", "load_pairs"]

Pair = tuple[np.ndarray, np.ndarray]


def _channel_first(array: np.ndarray, spatial_dims: int) -> np.ndarray:
    return array[np.newaxis] if array.ndim == spatial_dims else array


def _synthetic(config: DataConfig, spatial_dims: int) -> tuple[list[Pair], list[Pair]]:
    from seamfree.data.synthetic import SyntheticSpec, synthetic_image

    names = {f.name for f in dataclasses.fields(SyntheticSpec)}
    unknown = sorted(set(config.synthetic_options) - names)
    if unknown:
        raise ConfigError(f"unknown data.synthetic_options {unknown}; known: {sorted(names - {'kind'})}")
    if len(config.synthetic_shape) != spatial_dims:
        raise ConfigError(f"data.synthetic_shape {config.synthetic_shape} has {len(config.synthetic_shape)} axes, the "
                          f"model is {spatial_dims}D")
    spec = SyntheticSpec(kind=config.synthetic_kind, **config.synthetic_options)
    pairs = []
    for k in range(config.synthetic_train + config.synthetic_val):
        image, mask = synthetic_image(tuple(config.synthetic_shape), spec, seed=config.seed * 1000 + k)
        pairs.append((image[np.newaxis], mask[np.newaxis]))
    return pairs[:config.synthetic_train], pairs[config.synthetic_train:]


def _files(images: tuple[str, ...], masks: tuple[str, ...], spatial_dims: int) -> list[Pair]:
    if len(images) != len(masks):
        raise ConfigError(f"data lists {len(images)} image file(s) but {len(masks)} mask file(s); "
                          "give one mask per image")
    pairs = []
    for image_path, mask_path in zip(images, masks):
        with open_image(image_path, spatial_dims=spatial_dims) as source:
            image = source.read_all()
        with open_image(mask_path, spatial_dims=spatial_dims) as source:
            mask = (source.read_all() > 0).astype(np.uint8)
        if image.shape[1:] != mask.shape[1:]:
            raise DataError(f"{mask_path} has spatial shape {mask.shape[1:]}, its image {image_path} {image.shape[1:]}")
        pairs.append((image, mask))
    return pairs


def load_pairs(config: DataConfig, spatial_dims: int) -> tuple[list[Pair], list[Pair]]:
    """Return (training pairs, validation pairs) described by ``config``."""
    if config.source == "synthetic":
        train, val = _synthetic(config, spatial_dims)
    elif config.source == "files":
        train = _files(config.images, config.masks, spatial_dims)
        val = _files(config.val_images, config.val_masks, spatial_dims)
    else:
        from seamfree.data.datasets import load_dataset_pairs

        train, val = load_dataset_pairs(config.source, target=config.target, subset=config.subset,
                                        spatial_dims=spatial_dims)
    if config.subset_seed is not None:
        order = np.random.default_rng(config.subset_seed).permutation(len(train))
        train = [train[k] for k in order]
    if config.limit is not None:
        train = train[:config.limit]
    if not train:
        raise DataError(f"the training set of data source {config.source!r} is empty; check the data section "
                        "(images, synthetic_train, limit)")
    return train, val
