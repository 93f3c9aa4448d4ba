"""The plugin's "Find seams" action: seams without the model, on any image or labels layer.

It calls :func:`seamfree.diagnostics.seam_grid.find_seams` on the layer's full-resolution data (a dask or zarr
layer is read block by block) and adds the seam map as a layer aligned with it; the verdict is shown as a
notification and returned, so that every front end says the same thing.
"""


from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.types import LayerDataTuple
from napari.utils.notifications import show_info

from seamfree.diagnostics.seam_grid import SeamGrid, find_seams
from seamfree.errors import ShapeError

__all__ = ["find_seams_in_layer", "seam_layer"]


def find_seams_in_layer(layer: Layer, period: int = 0, offset: int = 0) -> list[LayerDataTuple]:
    """Find the tile grid of ``layer`` (period 0: search it) and return the seam map as a new layer."""
    if not isinstance(layer, Image | Labels):
        raise ShapeError(f"layer {layer.name!r} is a {type(layer).__name__} layer; choose an image or labels layer")
    if isinstance(layer, Image) and layer.rgb:
        raise ShapeError(f"layer {layer.name!r} is RGB; seams are looked for in one channel (a prediction)")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if data.ndim not in (2, 3):
        raise ShapeError(f"layer {layer.name!r} has {data.ndim} dimensions; find seams in a 2D image or a 3D "
                         "volume (select one frame of a time series first)")
    result = find_seams(data, period=period or None, offset=offset if period else None,
                        kind="labels" if isinstance(layer, Labels) else "values", spatial_dims=data.ndim)
    show_info(f"{layer.name}: {result.summary}")
    return [] if result.seam_map is None else [seam_layer(result, layer)]


def seam_layer(result: SeamGrid, layer: Any) -> LayerDataTuple:
    """The seam map of ``result`` as an image layer over ``layer`` (one pixel per segment, scaled to fit)."""
    if result.seam_map is None:
        raise ValueError(f"no seam map to show: {result.summary}")
    scale = np.asarray(layer.scale[-result.seam_map.ndim:], dtype=float) * np.asarray(result.segment)
    translate = np.asarray(layer.translate[-result.seam_map.ndim:], dtype=float)
    translate = translate + (np.asarray(result.segment) - 1) / 2 * np.asarray(layer.scale[-result.seam_map.ndim:])
    metadata = {"seamfree_seams": result.to_dict()}
    return (result.seam_map, {"name": f"seams of {layer.name}", "scale": tuple(scale), "translate": tuple(translate),
                              "colormap": "magma", "blending": "additive", "metadata": metadata}, "image")
