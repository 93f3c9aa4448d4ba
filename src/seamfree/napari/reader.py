"""napari reader for seamfree's outputs, and the plugin's sample data (no Qt, no napari, no torch import: opening
a file is fast).

The reader claims only OME-Zarr folders that seamfree wrote (``seamfree`` in the group's attributes) and opens
them lazily, every level and every label image (:func:`~seamfree.napari.layers.output_layers`); other OME-Zarr
files are left to napari-ome-zarr.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from seamfree.io.zarr_output import is_seamfree_zarr
from seamfree.napari.layers import LayerData, output_layers

__all__ = ["em_sample", "get_reader", "nuclei_sample"]


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """The npe2 reader hook: a function that opens ``path`` when it is a seamfree OME-Zarr output, else None."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(_claims(Path(p)) for p in paths):
        return None
    return read_outputs


def _claims(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" and path.is_dir() and is_seamfree_zarr(path)


def read_outputs(path: str | list[str]) -> list[LayerData]:
    """Every layer of the seamfree output(s) at ``path``."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        layers += output_layers(p)
    return layers


def nuclei_sample(size: int = 512) -> list[LayerData]:
    """The demo's synthetic nuclei (uneven illumination, empty regions, debris) and their mask."""
    from seamfree.data.synthetic import SyntheticSpec, synthetic_image  # the samples import torch; the reader not
    from seamfree.study.demo import DEMO_CONDITIONS

    image, mask = synthetic_image((size, size), SyntheticSpec("nuclei", **DEMO_CONDITIONS), seed=10_000)
    image, mask = np.asarray(image), np.asarray(mask)
    image = image[0] if image.ndim == 3 else image
    mask = mask[0] if mask.ndim == 3 else mask
    return [(image, {"name": "synthetic nuclei"}, "image"),
            (mask.astype(np.uint8), {"name": "synthetic nuclei: mask"}, "labels")]


def em_sample(size: int = 512) -> list[LayerData]:
    """A section of the ISBI 2012 EM challenge (membranes) with its labels, from the local dataset cache
    (``seamfree data fetch isbi2012``, or ``SEAMFREE_DATA``); a DataError naming the fetch command when absent."""
    from seamfree.data.datasets import load_dataset

    image, mask = load_dataset("isbi2012", "test")[0]
    image, mask = image[0][:size, :size], mask[0][:size, :size]
    return [(image, {"name": "ISBI 2012 EM section"}, "image"),
            (mask.astype(np.uint8), {"name": "ISBI 2012 EM section: membranes"}, "labels")]
